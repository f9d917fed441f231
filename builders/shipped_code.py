"""Ship the platform's code with a Serve config, for clusters where it is not the current directory.

``serve deploy`` imports ``builders.app_builder`` in the replicas' worker processes. Started by
``ray start`` in the repository root, the workers find it there; anywhere else (a cluster
started in another directory, a stock Ray image, another machine) the code must travel in the
applications' ``runtime_env``. Ray takes a ``working_dir`` as a remote URI for ``serve
deploy`` (``file://`` for a shared filesystem, ``s3://``, ``gs://``, ``https://``), so
``deploy_app.py --render --working-dir DIR`` zips the code into DIR and names its
``file://`` URI; given a URI it names it as is (upload the zip that a DIR run made).

The zip is reproducible (sorted entries, fixed timestamps) and named after its content, so
rendering again with unchanged code gives the same URI and Serve restarts nothing. A working
directory moves the replicas' current directory, so relative local paths in the models'
entries (``./.models/...``) are made absolute: they name the same files on this machine or a
filesystem every node mounts.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
# What the replicas import: the entry module and the platform's packages (not tests, benches,
# models, or the virtual environment).
CODE = ("deploy_app.py", "builders", "cloud", "common", "configs", "serve", "servers")
RELATIVE_PREFIXES = ("./", "../")


def code_zip(root: Path = REPOSITORY) -> bytes:
    """The platform's code as a zip whose bytes depend only on the files' paths and contents."""
    files = []
    for name in CODE:
        path = root / name
        files += (
            [path]
            if path.is_file()
            else [p for p in path.rglob("*") if p.is_file() and _shipped(p)]
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(
                path.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0)
            )
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _shipped(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix != ".pyc"


def working_dir_uri(target: str) -> str:
    """``target`` itself when it is a URI; else write the code's zip into the directory ``target``
    and return its ``file://`` URI."""
    if "://" in target:
        return target
    directory = Path(target).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data = code_zip()
    path = directory / f"rayserve-platform-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)  # whole or absent: a node never unpacks half a zip
    return path.as_uri()


def with_shipped_code(raw: dict[str, Any], uri: str, platform_import_path: str) -> dict[str, Any]:
    """``raw`` (a Serve config) whose platform applications carry ``uri`` as their working_dir
    and name local files by absolute paths."""
    shipped = copy.deepcopy(raw)
    for app in shipped.get("applications", []):
        if app.get("import_path") != platform_import_path:
            continue
        app["runtime_env"] = {**(app.get("runtime_env") or {}), "working_dir": uri}
        app["args"] = absolute_paths(app.get("args") or {})
    return shipped


def absolute_paths(value: Any, base: Path | None = None) -> Any:
    """``value`` with every string that is a relative path to an existing file or directory
    (``./x``, ``../x``, relative to ``base``, default the current directory) made absolute."""
    base = base or Path.cwd()
    if isinstance(value, dict):
        return {key: absolute_paths(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [absolute_paths(item, base) for item in value]
    if (
        isinstance(value, str)
        and value.startswith(RELATIVE_PREFIXES)
        and os.path.exists(base / value)
    ):
        return os.path.abspath(base / value)  # links kept: they may point elsewhere on another node
    return value
