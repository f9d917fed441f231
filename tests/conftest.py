"""Every test session runs in a world of its own: temp dirs and caches made fresh for it.

A new machine has no ``/tmp/ray`` and no caches; a machine that ran Ray or vLLM before has
both. Pointing Ray, pytest, Hugging Face and vLLM at directories this session creates makes
both machines the same one (``ray.cluster_utils.Cluster`` writes ``<ray temp>/ray/
ray_current_cluster`` without creating the directory first).
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Short, on purpose: Ray puts Unix sockets under it, and their paths may not exceed 107 bytes.
SESSION_TMP = Path(tempfile.mkdtemp(prefix="rsp-"))
atexit.register(shutil.rmtree, SESSION_TMP, ignore_errors=True)
(SESSION_TMP / "ray").mkdir()
for variable, directory in {
    "TMPDIR": SESSION_TMP,
    "RAY_TMPDIR": SESSION_TMP,  # pytest's tmp_path, Ray's default temp dir
    "XDG_CACHE_HOME": SESSION_TMP / "cache",
    "VLLM_CACHE_ROOT": SESSION_TMP / "cache" / "vllm",
    "HF_HOME": SESSION_TMP / "cache" / "huggingface",
    "TORCHINDUCTOR_CACHE_DIR": SESSION_TMP / "cache" / "inductor",
}.items():
    os.environ[variable] = str(directory)
tempfile.tempdir = str(SESSION_TMP)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def ray_temp_dir() -> str:
    """A fresh, short temp dir for one Ray cluster (its socket paths must stay under 108 bytes)."""
    return tempfile.mkdtemp(prefix="r", dir=SESSION_TMP)


os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
