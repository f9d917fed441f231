"""Inputs that a slow, pure check accepted before, remembered on disk across processes.

Checking a vLLM model's ``engine_kwargs`` builds a pydantic model from vLLM's ``EngineArgs``,
and importing vLLM costs about 10 s of CPU: each ``deploy_app.py`` apply, each save under
``--watch`` and each batch job paid it again for lines that had not changed. Whether a check
accepts an input depends only on that input, the check's own code and the library versions, all
named in ``checker``, so a digest of them, kept as an empty file, lets the next process skip it.
Refusals are never kept: their message is needed each time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pydantic


def _cache_dir() -> Path:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return cache_home / "rayserve-platform" / "passed-checks"


def _digest(checker: str, value: Any) -> str:
    text = json.dumps([checker, pydantic.VERSION, _spelled(value)])
    return hashlib.sha256(text.encode()).hexdigest()


def _spelled(value: Any) -> Any:
    """``value`` in JSON that keeps every type apart: JSON would spell the keys 1, True and "1"
    alike, and YAML's dates as nothing at all."""
    if isinstance(value, dict):
        return {"dict": sorted([_tagged(key), _spelled(item)] for key, item in value.items())}
    if isinstance(value, list | tuple):
        return {type(value).__name__: [_spelled(item) for item in value]}
    if value is None or isinstance(value, str | int | float):  # bool is an int: tagged below
        return [type(value).__name__, value]
    return _tagged(value)


def _tagged(value: Any) -> str:
    return f"{type(value).__qualname__}:{value!r}"


def passed_before(checker: str, value: Any) -> bool:
    return (_cache_dir() / _digest(checker, value)).exists()


def remember_passed(checker: str, value: Any) -> None:
    digest = _digest(checker, value)
    try:
        _cache_dir().mkdir(parents=True, exist_ok=True)
        (_cache_dir() / digest).touch()
    except OSError:  # a read-only home: the check runs each time, as before
        pass
