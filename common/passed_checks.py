"""Inputs that a slow, pure check accepted before, remembered on disk across processes.

Checking a vLLM model's ``engine_kwargs`` builds a pydantic model from vLLM's ``EngineArgs``,
and importing vLLM costs about 10 s of CPU: each ``deploy_app.py`` apply, each save under
``--watch`` and each batch job paid it again for lines that had not changed. Whether a check
accepts an input depends only on that input and the library versions named in ``checker``, so a
digest of the three, kept as an empty file, lets the next process skip it. Refusals are never
kept: their message is needed each time.
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


def _digest(checker: str, value: Any) -> str | None:
    """None for a value JSON cannot spell in one way (keys of several types)."""
    try:
        text = json.dumps(
            [checker, pydantic.VERSION, value],
            sort_keys=True,
            # YAML's dates and the like: the type is part of what was checked
            default=lambda other: f"{type(other).__qualname__}:{other!r}",
        )
    except TypeError:
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def passed_before(checker: str, value: Any) -> bool:
    digest = _digest(checker, value)
    return digest is not None and (_cache_dir() / digest).exists()


def remember_passed(checker: str, value: Any) -> None:
    digest = _digest(checker, value)
    if digest is None:
        return
    try:
        _cache_dir().mkdir(parents=True, exist_ok=True)
        (_cache_dir() / digest).touch()
    except OSError:  # a read-only home: the check runs each time, as before
        pass
