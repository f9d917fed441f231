"""Resolve a ``model_source`` to something an engine can load: a local directory or a hub id.

Cloud URIs (``s3://``, ``gs://``, ``abfs://``, ``file://``) are mirrored once into a
local cache with pyarrow's filesystems, which read credentials the standard way (AWS
and GCP environment variables, instance metadata). Hugging Face ids are passed through:
the engine's own loader fetches them (honouring ``HF_TOKEN`` and ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cloud.download_progress import DownloadWatch, bytes_under, hub_download_bytes
from configs.server_models import CLOUD_SCHEMES

COMPLETE = ".complete"  # written last into a finished copy
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
    """Copy the directory at ``uri`` into the cache (once) and return the local copy.

    Replicas on one node start together: a lock file lets one copy while the others wait and
    then use its copy. The copy lands in a private directory and is renamed into place whole,
    so a crash never leaves a half-copied model where the next replica would load it.
    """
    try:
        from pyarrow import fs
    except ImportError as exc:  # pragma: no cover - pyarrow is in requirements.txt
        raise RuntimeError(f"loading {uri} needs pyarrow: pip install pyarrow") from exc

    target = cache_path(uri, cache_dir)
    if (target / COMPLETE).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(target.name + ".lock")):
        if (target / COMPLETE).exists():  # copied by another replica while this one waited
            return target
        filesystem, path = fs.FileSystem.from_uri(uri.replace("gcs://", "gs://", 1))
        if filesystem.get_file_info(path).type == fs.FileType.NotFound:
            raise FileNotFoundError(f"model_source {uri} does not exist")
        partial = Path(tempfile.mkdtemp(dir=cache_dir, prefix=target.name + ".partial-"))
        try:
            fs.copy_files(
                path,
                str(partial),
                source_filesystem=filesystem,
                destination_filesystem=fs.LocalFileSystem(),
            )
            (partial / COMPLETE).touch()
            shutil.rmtree(target, ignore_errors=True)  # an unfinished copy left by an older version
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def cache_path(uri: str, cache_dir: Path) -> Path:
    """Where the copy of ``uri`` lives once complete (``<it>.partial-*`` while it is made)."""
    return cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16]


def download_watch(
    source: str, key: str, cache_dir: Path = DEFAULT_CACHE
) -> contextlib.AbstractContextManager:
    """A watch that publishes, under ``key``, how much of ``source`` the node has while it loads;
    nothing to watch for local paths and models already here."""
    if source.startswith(CLOUD_SCHEMES):
        target = cache_path(source, cache_dir.expanduser())
        if (target / COMPLETE).exists():
            return contextlib.nullcontext()
        partial = lambda: bytes_under([target, *target.parent.glob(target.name + ".partial-*")])  # noqa: E731
        return DownloadWatch(key, partial, _cloud_total(source))
    if os.path.exists(os.path.expanduser(source)) or os.environ.get("HF_HUB_OFFLINE") in (
        "1",
        "true",
        "True",
    ):
        return contextlib.nullcontext()
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(HF_HUB_CACHE) / repo_folder_name(repo_id=source, repo_type="model") / "blobs"
    return DownloadWatch(key, lambda: bytes_under([blobs]), _hub_total(source))


def _cloud_total(uri: str) -> int | None:
    try:
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(uri.replace("gcs://", "gs://", 1))
        infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
        return sum(info.size or 0 for info in infos if info.type == fs.FileType.File)
    except Exception:  # no listing: progress without a total; the copy itself reports real errors
        return None


def _hub_total(repo_id: str) -> int | None:
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, files_metadata=True, timeout=10)
        return hub_download_bytes((s.rfilename, s.size or 0) for s in info.siblings or ())
    except (
        Exception
    ):  # offline, private without a token, unknown id: the loader reports real errors
        return None


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` (every process on this node sees it)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
