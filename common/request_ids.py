"""Request ids: the client's ``X-Request-Id`` (or one made up), on every response, in error
bodies and in the router's, the engine's and vLLM's logs.

vLLM needs ids unique among the requests it runs, and two clients may send the same one: the
id vLLM gets is the client's with a random prefix (``3f2a9c1e-<client id>``), so its log lines
still carry what the client sent.
"""

from __future__ import annotations

import contextvars
import re
import secrets
import uuid

REQUEST_ID_HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # what a log line and a header can carry as is

current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)


def accept_request_id(sent: str | bytes | None) -> str:
    """The client's id when it is a plain token of at most 128 characters, else a new one."""
    if isinstance(sent, bytes):
        sent = sent.decode("latin-1")
    return sent if sent and _SANE.fullmatch(sent) else uuid.uuid4().hex


def engine_request_id(request_id: str) -> str:
    """The id vLLM gets: unique even when clients reuse ids."""
    return f"{secrets.token_hex(4)}-{request_id}"
