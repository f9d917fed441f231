"""HAProxy's own error answers in the platform's shape, instead of Ray's bare 500 (issue 34).

Ray 2.60's HAProxy config turns every error HAProxy itself detects into one
``500 Internal Server Error`` (``errorfile 502/503/504 .../500.http`` in ``defaults``, "per Serve's
default behavior"). The commonest of them is no bug: a 502 is a replica that closed the
connection before answering, which is what a replica whose process or node died mid-request
does (measured on the local cluster: requests in flight on the per-model URL when a worker was
killed). A client could not tell that from a bug, nor that a retry succeeds. The platform's copy
of the config answers them as the request policy does: the OpenAI error shape, a 503 with
``Retry-After`` for a replica that failed or none left to try, a 504 for HAProxy's timeout.

HAProxy answers before the request policy has checked any key, so no answer names a model.
Standard library only: this runs at every HAProxy (re)start (``common/haproxy_gate.py:main``).
"""

from __future__ import annotations

import json
import os
import re

# A replica that died is replaced in seconds (vision) to a minute (vLLM); the others take over
# at once. As the router's answer to the same case (serve/router/router.py).
RETRY_AFTER_S = 5
_ANSWERS = {  # HAProxy's status: (the status answered, OpenAI error type, code, message)
    502: (
        503,
        "service_unavailable_error",
        "model_unavailable",
        "the model's replica failed before answering; retry the request",
    ),
    503: (
        503,
        "service_unavailable_error",
        "model_unavailable",
        "no replica of the model is available; retry shortly",
    ),
    504: (504, "timeout_error", "timeout", "the model's replica did not answer in time"),
}
_REASONS = {503: "Service Unavailable", 504: "Gateway Timeout"}
_RAYS_ERRORFILE = re.compile(r"\s+errorfile (502|503|504) \S+")


def error_file(haproxy_status: int) -> str:
    """The raw HTTP answer HAProxy sends for its own ``haproxy_status`` (an ``errorfile``)."""
    status, type_, code, message = _ANSWERS[haproxy_status]
    error = {"message": message, "type": type_, "param": None, "code": code}
    body = json.dumps({"error": error})
    headers = ["Content-Type: application/json", "Cache-Control: no-cache"]
    headers += [f"Retry-After: {RETRY_AFTER_S}"] if status == 503 else []
    headers += [f"Content-Length: {len(body.encode())}"]
    return "\r\n".join([f"HTTP/1.1 {status} {_REASONS[status]}", *headers, "", body])


def with_error_answers(config: str, directory: str) -> tuple[str, dict[str, str]]:
    """Ray's HAProxy ``config`` with the platform's answers to HAProxy's 502, 503 and 504 in its
    ``defaults`` (Ray's ``errorfile`` lines for them dropped), and the files those name (path in
    ``directory`` -> content)."""
    paths = {status: os.path.join(directory, f"platform-{status}.http") for status in _ANSWERS}
    lines = [line for line in config.split("\n") if not _RAYS_ERRORFILE.fullmatch(line)]
    at = lines.index("defaults") + 1  # ValueError if Ray's layout changed: Ray's config is used
    ours = [f"    errorfile {status} {path}" for status, path in paths.items()]
    files = {path: error_file(status) for status, path in paths.items()}
    return "\n".join(lines[:at] + ours + lines[at:]), files
