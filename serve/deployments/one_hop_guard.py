"""What the router enforces, enforced again in front of vLLM's own app on a replica's HTTP port.

Behind Ray's HAProxy a request for ``/models/<model_id>/v1/...`` reaches the replica without
passing the router, and anyone who can reach a node can call the replica's port directly.
So the replica itself checks the API key, the body limit, the endpoints it exposes (only
the OpenAI ones: vLLM's app also has admin and scaling routes), and the media policy: every
media URL of a chat message is fetched here under the operator's policy and handed to vLLM
inline (vLLM itself is configured to fetch nothing). Errors keep the OpenAI shape.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.streaming import is_event_stream, stream_requested
from serve.router.auth import check_api_key, check_scope
from serve.router.errors import DONE_EVENT, APIError, request_timeout
from serve.router.key_limits import (
    USAGE_HEADER,
    KeyLimits,
    StreamMeter,
    ask_for_usage,
    ask_for_usage_header,
    meters_tokens,
    response_tokens,
)
from serve.router.media_refs import inline_chat_media
from serve.router.observed import ObservedRequests
from serve.router.routing import VLLM_ENDPOINTS, RouterSettings
from serve.router.uploads import parse_json_object, read_limited_body

# (method, path under the route prefix) the one-hop path serves; vLLM answers its own 404 for
# an endpoint the model lacks (embeddings on a chat model, ...).
ONE_HOP_ENDPOINTS = {("POST", path) for path in VLLM_ENDPOINTS} | {
    ("GET", "/v1/models"),
    ("GET", "/health"),
}


def with_cors(guard: OneHopGuard) -> ASGIApp:
    """The guarded app behind the platform's CORS policy when it has one."""
    return CORSMiddleware(guard, **guard.settings.cors) if guard.settings.cors else guard


def observed_one_hop(app: ASGIApp, model_id: str, counts: Counter[str]) -> ObservedRequests:
    """``app`` (the guarded vLLM app) with the one-hop path's request ids, metrics and log lines:
    the outermost layer of a vLLM replica's HTTP port. vLLM takes the prefixed request id."""
    posts = frozenset(path for method, path in ONE_HOP_ENDPOINTS if method == "POST")
    return ObservedRequests(
        app, path="direct", model_id=model_id, endpoints=posts, engine_header=True, counts=counts
    )


MAX_METERED_ANSWER_BYTES = (
    64 * 1024 * 1024
)  # a JSON answer read for its usage (embeddings can be large)


class OneHopGuard:
    """ASGI middleware: refuse, or pass the request on with its body checked (and media inlined)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: RouterSettings,
        on_model: Callable[[Any], Awaitable[None]] | None = None,
    ):
        self.app, self.settings, self.on_model = (
            app,
            settings,
            on_model,
        )  # on_model: sees each body's "model"
        self.limits = KeyLimits(settings.platform_app or "")  # the rendered app names its platform
        self.model_ids = {
            route.model_id for route in settings.routes.values() if route.variant is None
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets on this path
            return
        try:
            receive, send, settle = await self._checked(scope, receive, send)
        except APIError as err:
            return await err.response()(scope, receive, send)
        try:
            await self._within_timeout(scope, receive, send)
        finally:  # done, cut by the timeout, the client gone: what was generated is charged
            settle()

    async def _within_timeout(self, scope: Scope, receive: Receive, send: Send) -> None:
        """vLLM's answer, cut at ``request_timeout_s`` (streams included) as on the router's path:
        a 504, or an error event when the stream began; cancelling vLLM's handler aborts the
        request."""
        answer = _AnswerState(send)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                await self.app(scope, receive, answer.send)
        except TimeoutError:
            error = request_timeout(self.settings.request_timeout_s)
            if not answer.started:
                await error.response()(scope, receive, send)
            elif not answer.finished:
                tail = (error.event() + DONE_EVENT).encode() if answer.events else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _checked(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[Receive, Send, Callable[[], None]]:
        request = Request(scope, receive)
        path = scope["path"][len(scope.get("root_path", "")) :] or "/"
        if (request.method, path) not in ONE_HOP_ENDPOINTS:
            raise APIError(
                404,
                f"{request.method} {path} is not served here; this URL serves "
                f"{', '.join(sorted(p for _, p in ONE_HOP_ENDPOINTS))}",
                code="not_found",
            )
        key = check_api_key(request.headers.get("authorization"), self.settings.api_keys)
        for model_id in self.model_ids:
            check_scope(
                key, model_id
            )  # this URL serves one model: a key outside its scope gets nothing
        await self.limits.check(key)
        if request.method != "POST":
            return receive, send, _nothing_to_settle
        raw = await read_limited_body(request, self.settings.max_request_bytes)
        body = parse_json_object(raw)
        changed = "messages" in body and await inline_chat_media(body, self.settings.media)
        if self.on_model is not None:
            await self.on_model(body.get("model"))
        settle = _nothing_to_settle
        if meters_tokens(key):
            meter = StreamMeter(ask_for_usage(body)) if stream_requested(body) else None
            answer = MeteredAnswer(
                send,
                meter,
                lambda tokens: self.limits.spend(key, tokens),
                ask_for_usage_header(body),
            )
            send, settle, changed = answer.send, answer.settle, True
        return _replay(json.dumps(body).encode() if changed else bytes(raw), receive), send, settle


class _AnswerState:
    """How far an answer got: started, an event stream, finished."""

    def __init__(self, send: Send):
        self._send = send
        self.started = self.events = self.finished = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.events = is_event_stream(message.get("headers"))
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


def _nothing_to_settle() -> None:
    pass


class MeteredAnswer:
    """An answer's ``send`` that counts its tokens: from the usage on an event stream's chunks
    (``meter``), or from the JSON answer's ``usage`` (the usage header of raw-bytes embeddings).
    ``settle`` charges them once, when the body ends or when the request ends any other way.
    Error answers (JSON even for a stream request) pass unchanged."""

    def __init__(self, send: Send, meter: StreamMeter | None, spend, keep_usage_header=True):
        self._send, self.meter, self._spend = send, meter, spend
        self.keep_usage_header = keep_usage_header
        self._answer = bytearray()
        self._started: dict[str, Any] = {}
        self._settled = False

    async def send(self, message: Message) -> None:
        usage_header = USAGE_HEADER.encode()
        if message["type"] == "http.response.start":
            headers = message.get("headers") or []
            self._started.update(
                status=message["status"],
                usage=dict(headers).get(usage_header),
                events=is_event_stream(headers),
            )
            if not self.keep_usage_header:
                kept = [(k, v) for k, v in headers if k.lower() != usage_header]
                message = {**message, "headers": kept}
        elif message["type"] == "http.response.body":
            body, last = message.get("body", b""), not message.get("more_body", False)
            if self.meter is not None and self._started.get("events"):
                text = self.meter.feed(body.decode("utf-8", "replace"))
                message = {
                    **message,
                    "body": (text + (self.meter.flush() if last else "")).encode(),
                }
            elif (
                self._started.get("status") == 200 and len(self._answer) < MAX_METERED_ANSWER_BYTES
            ):
                self._answer.extend(body)
            if last:
                self.settle()
        await self._send(message)

    def settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        if self.meter is not None and self._started.get("events"):
            self._spend(self.meter.tokens)
        else:
            self._spend(response_tokens(bytes(self._answer), self._started.get("usage")))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the (checked) body over once, then the client's own messages, so
    vLLM still sees a disconnect and aborts the request."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
