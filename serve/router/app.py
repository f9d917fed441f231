"""The OpenAI-compatible FastAPI app of ``MultiModelRouter``: model lookup and a thin pass-through
to the engine deployment that holds the model, behind the request policy both paths mount
(``serve/policy``: keys, limits, metering, body limits, chat media, timeouts). The engine parses
the body (once, on every path: this one, the one-hop URL and batch jobs) and answers a bad one
with a 400."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp

from common.engine_response import EngineResponse
from common.streaming import ClosingStreamingResponse, stream_requested
from configs.server_models import Capability
from serve.console import CONSOLE_PATH, install_console
from serve.platform_status import ModelPhase
from serve.policy.auth import admitted, request_key, unknown_model, visible
from serve.policy.capacity import DeploymentCapacities
from serve.policy.key_limits import KeyLimits
from serve.policy.request_policy import BODY_STATE, PolicyMount, RequestPolicy, guarded
from serve.router.admin import install_admin_routes
from serve.router.api_docs import DOCS_PATH, install_api_docs
from serve.router.errors import APIError, install_error_handlers
from serve.router.oip import OIP_INFER_ENDPOINT, OIP_INFER_PATHS, install_oip_routes
from serve.router.openapi_docs import openapi_description
from serve.router.pipelines import install_pipeline_routes, pipeline_card
from serve.router.readiness import Readiness
from serve.router.routing import (
    VLLM_ENDPOINTS,
    ModelRoute,
    RouterSettings,
    requested_model,
)
from serve.router.uploads import UploadMemory, read_upload_form

logger = logging.getLogger("ray.serve")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
JSON_ENDPOINTS = {**VLLM_ENDPOINTS, "/v1/audio/speech": Capability.SPEECH}
UPLOAD_ENDPOINTS = {
    "/v1/audio/transcriptions": Capability.TRANSCRIPTION,
    "/v1/audio/translations": Capability.TRANSLATION,
}

BODY_ENDPOINTS = {
    **{path: (c, "application/json") for path, c in JSON_ENDPOINTS.items()},
    **{path: (c, "multipart/form-data") for path, c in UPLOAD_ENDPOINTS.items()},
}


class EngineCaller(Protocol):
    """How the app reaches engines; Serve handles in production, fakes in unit tests."""

    async def call(
        self, route: ModelRoute, capability: Capability, body: dict
    ) -> EngineResponse: ...

    def stream(
        self, route: ModelRoute, capability: Capability, body: dict
    ) -> AsyncGenerator[str | EngineResponse, None]: ...

    async def status(self, route: ModelRoute, timeout_s: float) -> dict | None:
        """The stats of the engine behind ``route`` when a replica answers within ``timeout_s``,
        else None."""

    async def phases(self) -> dict[str, ModelPhase]:
        """Each model's phase and replica counts, by model id."""


ROUTER_MOUNT = PolicyMount(
    metrics_path="router",
    model_endpoints=frozenset(JSON_ENDPOINTS),
    app_read_endpoints=(
        *((re.escape(path), path) for path in UPLOAD_ENDPOINTS),
        (OIP_INFER_PATHS, OIP_INFER_ENDPOINT),
    ),
    public=frozenset({"/health", CONSOLE_PATH, DOCS_PATH}),
    # the console's and the API docs' pages ask for the key themselves
    public_prefixes=(CONSOLE_PATH + "/", DOCS_PATH + "/"),
)


def create_router_app(
    settings: RouterSettings, engines: EngineCaller, limits: KeyLimits | None = None
) -> ASGIApp:
    """The router's app as clients reach it: behind the request policy, ids and metrics."""
    return guarded(router_policy(settings, engines, limits))


def router_policy(
    settings: RouterSettings,
    engines: EngineCaller,
    limits: KeyLimits | None = None,
    capacities: DeploymentCapacities | None = None,
) -> RequestPolicy:
    """The router's FastAPI app inside the request policy (``limits``: the platform's per-key
    request limits, None: keys are not rate limited; ``capacities``: the deployments' slots in
    this process, shared with the engine caller's readiness probes)."""
    app = FastAPI(title="rayserve-platform", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    uploads = UploadMemory(settings.max_upload_memory_bytes)
    # the policy's slots, which the routes that read their own bodies (uploads, /v2) take too
    capacities = capacities or DeploymentCapacities()

    @app.get("/health")
    async def liveness() -> dict:
        return {"status": "ok"}

    ready_states = Readiness(settings, engines)

    @app.get("/v1/health")
    @app.get("/ready")
    async def readiness(request: Request) -> JSONResponse:
        return await ready_states.answer(request)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> dict:
        # a thread: the first call imports vLLM's protocol models
        return await asyncio.to_thread(
            openapi_description,
            app,
            BODY_ENDPOINTS,
            visible(request, settings.routes),
            # the policy's check, not the settings built here: keys may come later (user_config)
            request_key(request) is not None,
            sorted(visible(request, settings.pipelines)),
        )

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        pipelines = [pipeline_card(p) for p in visible(request, settings.pipelines).values()]
        return {
            "object": "list",
            "data": [r.card() for r in visible(request, settings.routes).values()] + pipelines,
        }

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict:
        pipeline = (
            None if model_id in settings.routes else admitted(request, settings.pipelines, model_id)
        )
        return (
            pipeline_card(pipeline)
            if pipeline
            else _route_for(request, settings.routes, model_id).card()
        )

    @app.api_route(
        "/models/{model_id}/{rest:path}", methods=["GET", "POST"], include_in_schema=False
    )
    async def no_model_url(model_id: str, request: Request) -> Response:
        """HAProxy sends a model's own URL to its application: what reaches the router is a model
        without one (a non-vLLM model, or the file served as one application), or no model the
        key may use, which gets the 404 the model's own URL gives a key outside its scope (an
        unknown model's, listing nothing), so a key learns no ids beyond its scope."""
        if admitted(request, settings.routes, model_id) is None:
            raise unknown_model(model_id, [])
        raise APIError(
            404,
            f"model {model_id!r} has no URL of its own; call it through /v1",
            param="model",
            code="no_model_url",
        )

    async def forward(request: Request, capability: Capability) -> Response:
        body = getattr(request.state, BODY_STATE)  # read, checked and metered by the policy
        route = _route_for(
            request,
            settings.routes,
            requested_model(request.headers, body.get("model")),
            capability,
        )
        body["model"] = (
            route.model_id
        )  # a variant named by header: vLLM knows its LoRA by the full name
        _check_context_length(route, body)
        if stream_requested(body):
            return await _stream(engines.stream(route, capability, body))
        return _as_response(await engines.call(route, capability, body))

    async def forward_upload(request: Request, capability: Capability) -> Response:
        with uploads.hold() as held:
            return await _forward_upload(request, capability, held)

    async def _forward_upload(request: Request, capability: Capability, held) -> Response:
        body = await read_upload_form(
            request, held.add_body(request, settings.max_upload_request_bytes)
        )
        route = _route_for(
            request,
            settings.routes,
            requested_model(request.headers, body.get("model")),
            capability,
        )
        file = body.get("file")
        if not isinstance(file, bytes) or not file:
            raise APIError(
                400,
                "'file' is required and must not be empty",
                param="file",
                code="missing_file" if file is None else "empty_file",
            )
        if route.max_upload_bytes and len(file) > route.max_upload_bytes:
            raise APIError(
                413,
                f"the file is {len(file)} bytes; {route.model_id!r} accepts up to "
                f"{route.max_upload_bytes}",
                param="file",
                code="file_too_large",
            )
        with capacities.admit(route, own_url=False):
            return _as_response(await engines.call(route, capability, body))

    install_oip_routes(app, settings, engines, uploads, capacities)
    install_pipeline_routes(app, settings, engines, uploads, limits)
    install_admin_routes(app, settings)
    install_console(app)
    install_api_docs(app)

    # One POST endpoint per capability: JSON bodies, or multipart uploads for audio input.
    for path, capability in JSON_ENDPOINTS.items():
        app.add_api_route(
            path,
            _endpoint(forward, capability),
            methods=["POST"],
            name=capability.value,
        )
    for path, capability in UPLOAD_ENDPOINTS.items():
        app.add_api_route(
            path,
            _endpoint(forward_upload, capability),
            methods=["POST"],
            name=capability.value,
        )
    return RequestPolicy(
        app,
        settings,
        ROUTER_MOUNT,
        limits,
        uploads,
        capacities=capacities,
    )


def _endpoint(handler, capability: Capability):
    async def endpoint(request: Request) -> Response:
        return await handler(request, capability)

    return endpoint


def _route_for(
    request: Request,
    routes: Mapping[str, ModelRoute],
    model: Any,
    capability: Capability | None = None,
) -> ModelRoute:
    if capability is not None and (model is None or model == ""):
        raise APIError(400, "'model' is required", param="model", code="missing_model")
    route = admitted(request, routes, model)
    if route is None:
        raise unknown_model(model, list(visible(request, routes)))
    if capability is not None and capability not in route.capabilities:
        serves = ", ".join(c.value for c in route.capabilities)
        raise APIError(
            400,
            f"model {route.model_id!r} cannot serve {capability.value}; it serves: {serves}",
            param="model",
            code="unsupported_endpoint",
        )
    return route


def _check_context_length(route: ModelRoute, body: dict[str, Any]) -> None:
    """The router's one check of a body's fields: the rest is parsed once, by the engine that
    serves it (vLLM's protocol models, or ours for the other engines), on every path alike."""
    limit = route.max_context_tokens
    for key in ("max_tokens", "max_completion_tokens"):
        asked = body.get(key)
        if limit and isinstance(asked, int) and asked > limit:
            raise APIError(
                400,
                f"{key} ({asked}) exceeds the model's context length ({limit})",
                param=key,
                code="context_length_exceeded",
            )


def _as_response(result: EngineResponse) -> Response:
    return Response(
        result.content,
        status_code=result.status_code,
        media_type=result.media_type,
        headers=result.headers,
    )


async def _stream(chunks: AsyncGenerator[str | EngineResponse, None]) -> Response:
    """Answer errors that precede any output as plain responses; otherwise stream SSE."""
    first = await anext(chunks, None)
    if isinstance(first, EngineResponse):
        await chunks.aclose()
        return _as_response(first)

    async def relay() -> AsyncGenerator[str, None]:
        # A replica that dies mid-stream raises here: the policy ends the stream with an error
        # event.
        try:
            if first is not None:
                yield first
            async for chunk in chunks:
                # An engine answers whole only before its first chunk (servers/base_engine.py).
                assert isinstance(chunk, str), "an EngineResponse after the stream began"
                yield chunk
        finally:
            await chunks.aclose()  # client gone: cancels the engine call, which aborts generation

    return ClosingStreamingResponse(relay(), media_type="text/event-stream", headers=SSE_HEADERS)
