"""The request policy of every path to a model, written once: an ASGI middleware that the router's
app (``/v1``, ``/v2``, pipelines) and each vLLM replica's own HTTP app (the one-hop path,
``/models/<model_id>/v1``) both mount, so a rule cannot hold on one path and not the other.

In the order a request meets them:

1. endpoints: a one-hop port serves the OpenAI endpoints only (vLLM's app also has admin and
   scaling routes): 404 for the rest;
2. auth: the bearer key (401), but for public paths (liveness, the console's page); an app's own
   model list (vLLM's on a one-hop port) cut to the models the key may use;
3. body: a model endpoint's JSON body is read under the body limit (413) and parsed (400); a model
   outside the key's scope is the 404 of an unknown one; a model whose deployment has taken in
   all it can run and queue is a 503 with ``Retry-After`` at once (``capacity.py``; HAProxy in
   front refuses the same ones sooner, from the limits published here); media URLs are fetched
   under the media policy and handed on inline, their bytes held against the upload memory until
   the request ends;
4. limits: the key's requests and tokens per minute (429), reserving prompt + ``max_tokens``;
5. metering: the answer's tokens, counted as they pass, charged once however the request ends;
6. timeout: the whole request within ``request_timeout_s``, streams included (504, or an error
   event once a stream began); any failure after an answer began ends it with an error event.

Request ids, metrics and CORS wrap it (``guarded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.media_usage import MEDIA_USAGE_HEADER, MediaUsage
from common.metrics import platform_metrics
from common.streaming import is_event_stream, stream_requested
from configs.api_keys import APIKey
from serve.policy.auth import check_api_key, check_scope, unknown_model, visible
from serve.policy.budgets import check_budget
from serve.policy.capacity import DeploymentCapacities, GatePublisher, serve_app
from serve.policy.key_limits import RESERVATION_SLACK_S, KeyLimits
from serve.policy.key_ring import KeyRing
from serve.policy.media_refs import chat_images, inline_chat_media
from serve.policy.metering import (
    MeteredAnswer,
    StreamMeter,
    TokenCounts,
    ask_for_usage,
    ask_for_usage_header,
    guessed_prompt_tokens,
    record_answer,
    reserved_tokens,
)
from serve.policy.model_list import ScopedModelList
from serve.policy.observed import ObservedRequests
from serve.router.errors import DONE_EVENT, APIError, request_timeout
from serve.router.routing import ModelRoute, RouterSettings, requested_model
from serve.router.uploads import UploadMemory, parse_json_object, read_limited_body
from serve.usage.database import UsageDatabase, usage_database

logger = logging.getLogger("ray.serve")

BODY_STATE = "json_body"  # scope["state"] key: the checked body, for the app not to read it again
MODEL_STATE = "model_id"  # scope["state"] key: the model the request was routed to
IMAGES_STATE = "chat_images"  # scope["state"] key: the images of a chat body, for the ledger
METERED_STATE = "metered_answer"  # scope["state"] key: the answer's token counts, for the ledger
MEDIA_HEADER = MEDIA_USAGE_HEADER.encode()
REPLICA_FAILED = APIError(
    503, "the model's replica failed during the answer; retry the request", code="model_unavailable"
)


@dataclass(frozen=True)
class PolicyMount:
    """What differs between the paths: which requests exist, and how one names its model."""

    metrics_path: str  # the metrics' path label: "router" or "direct"
    model_endpoints: frozenset[str]  # POST paths whose JSON body goes to a model
    model_id: str | None = None  # the one model this app serves (one-hop); None: the body names it
    endpoints: frozenset[tuple[str, str]] | None = None  # (method, path) served; None: any
    public: frozenset[str] = frozenset({"/health"})  # answered without a key
    public_prefixes: tuple[str, ...] = ()
    on_model: Callable[[Any], Awaitable[None]] | None = None  # sees each body's "model"
    # the path of the app's own model list (vLLM's, unaware of keys): cut here to the key's scope
    model_list: str | None = None
    # POSTs to a model whose body the app reads itself (uploads, /v2 inference): (a regular
    # expression of the path, the endpoint the ledger names); the app sets the model it routed to
    # in the request's state (``MODEL_STATE``)
    app_read_endpoints: tuple[tuple[str, str], ...] = ()

    def is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(self.public_prefixes)

    def ledger_endpoint(self, path: str) -> str | None:
        """The endpoint a POST to ``path`` is recorded under; None: it calls no model."""
        if path in self.model_endpoints:
            return path
        return next((e for p, e in self.app_read_endpoints if re.fullmatch(p, path)), None)


@dataclass
class RequestPolicy:
    """ASGI middleware: refuse a request, or pass it on checked, metered and timed."""

    app: ASGIApp
    settings: RouterSettings  # replaced on reconfigure (the timeout may change live)
    mount: PolicyMount
    limits: KeyLimits | None = None  # None: keys are not rate limited
    uploads: UploadMemory | None = None  # None: one of its own, of the settings' size
    keys: KeyRing = field(default_factory=KeyRing)
    capacities: DeploymentCapacities = field(default_factory=DeploymentCapacities)
    gate: GatePublisher | None = (
        None  # None: HAProxy in front of this Serve replica gets its limits
    )

    def __post_init__(self) -> None:
        if self.uploads is None:
            self.uploads = UploadMemory(self.settings.max_upload_memory_bytes)
        if self.gate is None:
            self.gate = GatePublisher(serve_app(), self.mount.model_id, self.mount.model_endpoints)
        self.gate.check(self.settings.routes)
        url = self.settings.usage_database
        self.usage: UsageDatabase | None = usage_database(url) if url else None
        platform_metrics()  # made here, once per process: never on a request's way (Ray's import)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets on either path
            return
        assert self.gate is not None  # set in __post_init__
        self.gate.check(self.settings.routes)
        answer = _AnswerState(send)
        started = time.perf_counter()
        try:
            await self._answered(scope, receive, answer)
        finally:
            self._record(scope, answer, time.perf_counter() - started)

    async def _answered(self, scope: Scope, receive: Receive, answer: _AnswerState) -> None:
        timeout_s = self.settings.request_timeout_s
        deadline = asyncio.timeout(timeout_s)  # the whole request: its admission included
        try:
            async with deadline, contextlib.AsyncExitStack() as request_end:
                try:
                    receive, app_send = await self._admitted(
                        scope, receive, answer.send, request_end
                    )
                except APIError as err:
                    return await err.response(Request(scope))(scope, receive, answer.send)
                # leaving the deadline cancels the app, which cancels the engine's work
                await self.app(scope, receive, app_send)
        except TimeoutError:
            if not deadline.expired():
                raise
            await answer.end(scope, receive, request_timeout(timeout_s))
        except Exception:
            if not answer.started:
                raise
            logger.exception("the answer failed after it began")  # a replica died mid-stream
            await answer.end(scope, receive, REPLICA_FAILED)

    async def _admitted(
        self, scope: Scope, receive: Receive, send: Send, request_end: contextlib.AsyncExitStack
    ) -> tuple[Receive, Send]:
        """The request's receive and send once it passed every check (a body replayed, an
        answer metered); an APIError for the first check it fails."""
        request = Request(scope, receive)
        path = scope["path"][len(scope.get("root_path", "")) :] or "/"
        served = self.mount.endpoints
        if served is not None and (request.method, path) not in served:
            raise APIError(
                404,
                f"{request.method} {path} is not served here; this URL serves "
                f"{', '.join(sorted(p for _, p in served))}",
                code="not_found",
            )
        if self.mount.is_public(path):
            return receive, send
        configured = self.settings.api_keys
        stored = self.usage.snapshot.keys if self.usage is not None else ()
        key = check_api_key(
            request.headers.get("authorization"),
            self.keys.current(configured) + stored,
            bool(configured) or bool(stored) or self.settings.keys_pending,
        )
        state = scope.setdefault("state", {})
        state["api_key"] = key
        if self.mount.model_id is not None:  # this URL serves one model: outside the scope, none
            self._check_own_scope(key)
        if not (request.method == "POST" and path in self.mount.model_endpoints):
            if self.limits is not None:
                await self.limits.admit(key)
            if key is not None and (request.method, path) == ("GET", self.mount.model_list):
                send = ScopedModelList(send, key).send
            return receive, send
        body = parse_json_object(await read_limited_body(request, self.settings.max_request_bytes))
        route = self._route(request, body)
        named = requested_model(request.headers, body.get("model"))
        # refused as the request named it: on the one-hop URL a name it does not serve stands for
        # the URL's model (vLLM answers it), and its 404 must be an adapter outside the scope's
        check_scope(
            key,
            route.model_id,
            None if self.mount.model_id else self.settings.routes,
            named if named else route.model_id,
        )
        state[MODEL_STATE] = route.model_id
        if self.usage is not None:
            check_budget(self.usage, key)
        # a place in the deployment's capacity (variants and a group's models share it), or the
        # 503 at once, not behind all the work before Serve's own queue
        slot = request_end.enter_context(
            self.capacities.admit(route, own_url=self.mount.model_id is not None)
        )
        if slot is not None:
            send = slot.freed_by_last_byte(send)
        metered = await self._metered(key, route, body, send, request_end)
        state[METERED_STATE] = metered
        send = metered.send if metered is not None else send
        if "messages" in body:  # chat, and tokenize or classify of a conversation
            assert self.uploads is not None  # set in __post_init__
            held = request_end.enter_context(self.uploads.hold())
            await inline_chat_media(body, self.settings.media, held.add)
            state[IMAGES_STATE] = chat_images(body)
        if self.mount.on_model is not None:
            await self.mount.on_model(body.get("model"))
        state[BODY_STATE] = body
        if metered is not None:
            metered.reached_model = True
        return _replay(body, receive), send

    def _check_own_scope(self, key: APIKey | None) -> None:
        """The one-hop URL's model, or one of its variants, must be the key's."""
        own = self.mount.model_id or ""
        variants = [r.model_id for r in self.settings.routes.values() if r.parent == own]
        if key is not None and not any(key.allows(m) for m in [own, *variants]):
            check_scope(key, own)

    def _route(self, request: Request, body: dict[str, Any]) -> ModelRoute:
        """The route of the model the request is for: the one the body (or Serve's multiplexed
        header) names, a variant included; on the one-hop path, else the URL's own model (vLLM
        answers a name it does not serve). A 400 or 404 before any work for a model the router
        cannot name, as for one outside the key's scope."""
        name = requested_model(request.headers, body.get("model"))
        route = self.settings.routes.get(name) if isinstance(name, str) else None
        own = self.mount.model_id
        if own is not None and (route is None or route.engine_model_id != own):
            route = self.settings.routes.get(own)
        if route is not None:
            return route
        if name is None or name == "":
            raise APIError(400, "'model' is required", param="model", code="missing_model")
        raise unknown_model(name, list(visible(request, self.settings.routes)))

    async def _metered(
        self,
        key: APIKey | None,
        route: ModelRoute,
        body: dict[str, Any],
        send: Send,
        request_end: contextlib.AsyncExitStack,
    ) -> MeteredAnswer | None:
        """``send`` that counts the answer's tokens when the key meters them (None: it does not):
        admitted against the key's limits first (a 429), with prompt + ``max_tokens`` reserved,
        and settled once when the request ends, however it ends (done, failed, cut by the
        timeout, the client gone)."""
        if self.limits is None and self.usage is None:
            return None
        reserve = reserved_tokens(body, route.max_context_tokens)
        hold_s = self.settings.request_timeout_s + RESERVATION_SLACK_S
        charge = await self.limits.admit(key, reserve, hold_s) if self.limits else None
        if charge is None and self.usage is None:
            return None
        meter = StreamMeter(ask_for_usage(body)) if stream_requested(body) else None
        spend = charge or _uncharged
        answer = MeteredAnswer(
            send, meter, spend, ask_for_usage_header(body), reserve, guessed_prompt_tokens(body)
        )
        request_end.callback(answer.settle)
        return answer

    def _record(self, scope: Scope, answer: _AnswerState, latency_s: float) -> None:
        """A model endpoint's request, once, however it ended, in the per-key metrics and the
        usage ledger (what reached no model, a 401 say, under the model it named or none)."""
        path = scope["path"][len(scope.get("root_path", "")) :] or "/"
        endpoint = self.mount.ledger_endpoint(path) if scope.get("method") == "POST" else None
        if endpoint is None:
            return
        state = scope.get("state") or {}
        key: APIKey | None = state.get("api_key")
        metered: MeteredAnswer | None = state.get(METERED_STATE)
        counts = metered.counts if metered is not None else TokenCounts()
        record_answer(
            self.usage,
            key,
            state.get(MODEL_STATE) or self.mount.model_id or "",
            endpoint,
            answer.status or 499,  # no answer began: the client left first
            counts,
            latency_s,
            answer.media + MediaUsage(images=state.get(IMAGES_STATE, 0)),
        )


def _uncharged(_tokens: int) -> None:
    """The spend of a key whose tokens no limit counts (the ledger still records them)."""


class _AnswerState:
    """How far an answer got (started, an event stream, finished), and how it ends on an error."""

    def __init__(self, send: Send):
        self._send = send
        self.started = self.events = self.finished = False
        self.status: int | None = None
        self.media = MediaUsage()  # what the engine measured, from its answer's header

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = message.get("headers") or []
            self.events = is_event_stream(headers)
            self.media = MediaUsage.of_header(dict(headers).get(MEDIA_HEADER))
            if self.media:  # the ledger's, not the client's
                kept = [(k, v) for k, v in headers if k.lower() != MEDIA_HEADER]
                message = {**message, "headers": kept}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def end(self, scope: Scope, receive: Receive, error: APIError) -> None:
        """``error`` as the answer when none began; else the stream's error event, or the end
        of a body cut short (the client sees it incomplete)."""
        if not self.started:
            return await error.response(Request(scope))(scope, receive, self._send)
        if self.finished:
            return
        tail = (error.event() + DONE_EVENT).encode() if self.events else b""
        with contextlib.suppress(OSError):  # the client may be gone too
            await self._send({"type": "http.response.body", "body": tail, "more_body": False})


def _replay(body: dict[str, Any], receive: Receive) -> Receive:
    """A receive that hands the (checked) body over once, then the client's own messages, so
    the app still sees a disconnect and aborts the request. The body is encoded only when the
    app reads it: vLLM's app does, the router's takes it from the request's state."""
    pending = [body]

    async def replayed() -> Message:
        if not pending:
            return await receive()
        encoded = json.dumps(pending.pop()).encode()
        return {"type": "http.request", "body": encoded, "more_body": False}

    return replayed


def guarded(policy: RequestPolicy, counts: Counter[str] | None = None) -> ASGIApp:
    """``policy`` behind the platform's CORS policy (a preflight carries no key) and inside the
    request ids and metrics (``ObservedRequests``, outermost: it sees the answer the client
    gets). The one-hop path hands vLLM the prefixed request id and counts its POSTs by model."""
    mount, settings = policy.mount, policy.settings
    app: ASGIApp = CORSMiddleware(policy, **settings.cors) if settings.cors else policy
    if mount.model_id is None:
        return ObservedRequests(app, path=mount.metrics_path, endpoints=mount.model_endpoints)
    posts = frozenset(path for method, path in mount.endpoints or () if method == "POST")
    return ObservedRequests(
        app,
        path=mount.metrics_path,
        model_id=mount.model_id,
        endpoints=posts,
        engine_header=True,
        counts=counts,
    )
