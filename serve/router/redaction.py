"""What ``/ready`` hides from callers other than an admin: the process, actor and node ids and the
addresses that Serve's and Ray's error texts and a replica's placement carry. They tell an
outsider where the platform's processes run and which to aim at, and help no one but an
operator."""

from __future__ import annotations

import re
from typing import Any

HIDDEN = "<hidden>"
PROCESS_FIELDS = ("pid", "actor_id")  # a replica's placement keeps its node and GPUs

# A named value: "pid=1234", "actor_id: 8a7c...", "node id: 6f8e...", "ip=10.0.0.1", "IP: ...".
_NAMED = re.compile(
    r"\b(?P<name>pid|ip|(?:actor|node|worker|job|task|placement[_ ]group)[_ ]id"
    r"|node[_ ]ip(?:[_ ]address)?)(?P<sep>\s*[=:]\s*)[^\s,;)]+",
    re.IGNORECASE,
)
# Values that need no name to be known: an IPv4 address (and port), a memory address in an
# object's repr, and Ray's hex ids (actors 32 digits, nodes and workers 56).
_BARE = re.compile(
    r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\b0x[0-9a-f]{6,}\b|\b[0-9a-f]{16,}\b", re.IGNORECASE
)


def redact_process_details(text: str) -> str:
    """``text`` (an error, a phase's detail) with process, actor and node ids and addresses
    replaced by ``<hidden>``."""
    named = _NAMED.sub(lambda m: f"{m['name']}{m['sep']}{HIDDEN}", text)
    return _BARE.sub(HIDDEN, named)


def redacted_model_state(state: dict[str, Any]) -> dict[str, Any]:
    """A model's ``/ready`` entry as a caller other than an admin sees it (``state`` untouched)."""
    shown = dict(state)
    if isinstance(shown.get("phase_detail"), str):
        shown["phase_detail"] = redact_process_details(shown["phase_detail"])
    if isinstance(shown.get("replicas"), dict) and shown["replicas"].get("nodes"):
        shown["replicas"] = {
            **shown["replicas"],
            "nodes": [HIDDEN] * len(shown["replicas"]["nodes"]),
        }
    if isinstance(shown.get("placement"), dict):
        shown["placement"] = {
            name: value for name, value in shown["placement"].items() if name not in PROCESS_FIELDS
        }
    return shown
