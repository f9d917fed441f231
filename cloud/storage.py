"""Resolve a ``model_source`` to something an engine can load: a local directory or a hub id.

Cloud URIs (``s3://``, ``gs://``, ``abfs://``, ``file://``) are mirrored once into a
local cache with pyarrow's filesystems, which read credentials the standard way (AWS
and GCP environment variables, instance metadata). Hugging Face ids are passed through:
the engine's own loader fetches them (honouring ``HF_TOKEN`` and ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from configs.server_models import CLOUD_SCHEMES

DEFAULT_CACHE = Path(os.environ.get("PLATFORM_MODEL_CACHE", "~/.cache/rayserve-platform/models"))


def resolve_model_source(source: str, cache_dir: Path = DEFAULT_CACHE) -> str:
    """Return a local path for paths and cloud URIs, the id itself for hub models."""
    if source.startswith(CLOUD_SCHEMES):
        return str(download_from_cloud(source, cache_dir.expanduser()))
    expanded = os.path.expanduser(source)
    if os.path.exists(expanded):
        return os.path.abspath(expanded)
    return source


def download_from_cloud(uri: str, cache_dir: Path) -> Path:
    """Copy the directory at ``uri`` into the cache (once) and return the local copy."""
    try:
        from pyarrow import fs
    except ImportError as exc:  # pragma: no cover - pyarrow is in requirements.txt
        raise RuntimeError(f"loading {uri} needs pyarrow: pip install pyarrow") from exc

    target = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16]
    done = target / ".complete"
    if done.exists():
        return target
    filesystem, path = fs.FileSystem.from_uri(uri.replace("gcs://", "gs://", 1))
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"model_source {uri} does not exist")
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    fs.copy_files(path, str(partial), source_filesystem=filesystem,
                  destination_filesystem=fs.LocalFileSystem())
    partial.rename(target) if not target.exists() else None
    done.touch()
    return target
