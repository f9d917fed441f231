"""Every request to the router, or to a vLLM replica's own server: its id and its metrics.

An ASGI middleware, outermost, so it sees the answer as the client gets it: the status, when
the first event of a stream left, how many events followed. It gives the request its id
(``common/request_ids.py``), returns it in ``X-Request-Id``, logs one line per request and
records the per-model metrics (``common/metrics.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.metrics import platform_metrics
from common.request_ids import (
    REQUEST_ID_HEADER,
    accept_request_id,
    current_request_id,
    engine_request_id,
)
from common.streaming import is_event_stream

logger = logging.getLogger("ray.serve")

REJECTION_STATUSES = {413, 429, 503, 504}
MAX_ERROR_BODY_BYTES = 4096  # enough of an error answer to read its code
_HEADER = REQUEST_ID_HEADER.encode()


class ObservedRequests:
    """``path``: the metrics' path label. ``model_id``: the model every request here is for (the
    one-hop path), else the router names it in ``request.state.model_id``. Every POST route is
    counted, and ``endpoints``: the paths counted when a request was refused before any route
    (by the request policy). ``engine_header``: hand the app the prefixed id in
    ``X-Request-Id`` (vLLM's own server takes its request id from that header). ``counts``: requests
    by model, kept for the replica's stats."""

    def __init__(
        self,
        app: ASGIApp,
        path: str,
        model_id: str | None = None,
        endpoints: frozenset[str] | None = None,
        engine_header: bool = False,
        counts: Counter[str] | None = None,
    ):
        self.app, self.path, self.model_id, self.endpoints = app, path, model_id, endpoints
        self.engine_header, self.counts = engine_header, counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = next((v for k, v in scope["headers"] if k == _HEADER), None)
        request_id = accept_request_id(sent)
        # Starlette streams an ASGI >= 2.4 response without listening for the client's disconnect
        # and leaves the body's generator to the garbage collector, so vLLM (or the router's relay)
        # would generate to the end for a client that left. Below 2.4 it listens and cancels the
        # stream at once, which aborts the generation.
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}
        if self.engine_header:
            headers = [(k, v) for k, v in scope["headers"] if k != _HEADER]
            scope["headers"] = headers + [(_HEADER, engine_request_id(request_id).encode())]
        token = current_request_id.set(request_id)
        # Serve's own middleware has already given the request an id (the client's, or one it made)
        # and returns it; the answer gets ours only where it differs (the client's was unusable).
        answer = _Answer(
            send, request_id if sent is None or sent.decode("latin-1") != request_id else None
        )
        started = time.perf_counter()
        try:
            await self.app(scope, receive, answer.send)
        finally:
            current_request_id.reset(token)
            endpoint = self._endpoint(scope)
            if endpoint is not None:
                self._record(scope, endpoint, answer, started, request_id)

    def _endpoint(self, scope: Scope) -> str | None:
        """The POST route the request reached, or the one of ``endpoints`` it was refused at
        before any route (by the request policy: 401, 404, 413, 429, 503)."""
        if scope["method"] != "POST":
            return None
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", None)
        path = scope["path"][len(scope.get("root_path", "")) :]
        return path if self.endpoints is not None and path in self.endpoints else None

    def _record(
        self, scope: Scope, endpoint: str, answer: _Answer, started: float, request_id: str
    ) -> None:
        elapsed = time.perf_counter() - started
        model = self.model_id or (scope.get("state") or {}).get("model_id", "-")
        tags = {"model": model, "endpoint": endpoint, "path": self.path}
        metrics = platform_metrics()
        metrics.requests.inc(1, {**tags, "status": str(answer.status)})
        if self.counts is not None:
            self.counts[model] += 1
        metrics.latency.observe(elapsed, tags)
        if answer.first_event is not None:
            metrics.time_to_first_token.observe(answer.first_event - started, tags)
            if answer.events > 1:
                metrics.inter_token_latency.observe(
                    (answer.last_event - answer.first_event) / (answer.events - 1), tags
                )
        reason = None
        if answer.status in REJECTION_STATUSES:
            reason = _error_code(answer.error_body) or str(answer.status)
            metrics.rejections.inc(1, {"model": model, "path": self.path, "reason": reason})
        logger.info(
            "%s %s model=%s status=%d%s %.1f ms request_id=%s",
            scope["method"],
            endpoint,
            model,
            answer.status,
            f" ({reason})" if reason else "",
            elapsed * 1000,
            request_id,
        )


class _Answer:
    """The answer as it goes out: its status, its events' times, the start of an error body."""

    def __init__(self, send: Send, request_id: str | None):
        self._send, self._id = send, request_id.encode() if request_id else None
        self.status, self.stream, self.events = 500, False, 0
        self.first_event: float | None = None
        self.last_event = 0.0
        self.error_body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = [
                (k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER
            ]  # vLLM's own
            self.stream = is_event_stream(headers)
            message = {**message, "headers": headers + ([(_HEADER, self._id)] if self._id else [])}
        elif message["type"] == "http.response.body" and (body := message.get("body", b"")):
            if self.stream:
                self.last_event = time.perf_counter()
                self.first_event = self.first_event or self.last_event
                self.events += body.count(b"data: ")
            elif self.status >= 400 and len(self.error_body) < MAX_ERROR_BODY_BYTES:
                self.error_body += body[:MAX_ERROR_BODY_BYTES]
        await self._send(message)


def _error_code(body: bytes) -> str | None:
    try:
        error: Any = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return (
        error.get("code")
        if isinstance(error, dict) and isinstance(error.get("code"), str)
        else None
    )
