"""The OpenAI-compatible FastAPI app of ``MultiModelRouter``: auth, model lookup, chat media
inlining, and a thin pass-through to the engine deployment that holds the model. The engine
parses the body (once, on every path: this one, the one-hop URL and batch jobs) and answers a
bad one with a 400."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from common.engine_response import EngineResponse
from common.rendered_apps import CONFIG_FILE_ENV
from common.streaming import ClosingStreamingResponse, stream_requested
from configs.api_keys import APIKey
from configs.server_models import Capability
from serve.console import install_console
from serve.platform_status import READY, UNAVAILABLE, ModelPhase
from serve.router.auth import admitted, check_api_key, request_key, visible
from serve.router.errors import DONE_EVENT, APIError, install_error_handlers
from serve.router.key_limits import (
    USAGE_HEADER,
    KeyLimits,
    StreamMeter,
    ask_for_usage,
    ask_for_usage_header,
    metered,
    response_tokens,
    spender,
)
from serve.router.media_refs import inline_chat_media
from serve.router.observed import ObservedRequests
from serve.router.oip import install_oip_routes
from serve.router.openapi_docs import openapi_description
from serve.router.pipelines import install_pipeline_routes, pipeline_card, pipeline_state
from serve.router.routing import (
    VLLM_ENDPOINTS,
    ModelRoute,
    RouterSettings,
    deployment_states,
    model_state,
    requested_model,
)
from serve.router.uploads import UploadMemory, read_json_object, read_upload_form

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


def create_router_app(
    settings: RouterSettings, engines: EngineCaller, limits: KeyLimits | None = None
) -> FastAPI:
    """``limits``: the platform's per-key request limits (None: keys are not rate limited)."""
    app = FastAPI(title="rayserve-platform", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    if settings.cors:
        app.add_middleware(CORSMiddleware, **settings.cors)
    protected = [Depends(_auth_dependency(settings.api_keys, limits))]
    uploads = UploadMemory(settings.max_upload_memory_bytes)

    @app.get("/health")
    async def liveness() -> dict:
        return {"status": "ok"}

    @app.get("/v1/health", dependencies=protected)
    @app.get("/ready", dependencies=protected)
    async def readiness(request: Request) -> JSONResponse:
        bases = [r for r in visible(request, settings.routes).values() if r.variant is None]
        pipelines = visible(request, settings.pipelines)
        steps = [
            settings.routes[s.model]
            for p in pipelines.values()
            for s in p.steps
            if s.model in settings.routes
        ]
        states = await deployment_states(engines, bases + steps)
        models = {
            r.model_id: {
                "ready": states[r.deployment_name] is not None,
                "phase": READY,
                **model_state(r.model_id, states[r.deployment_name]),
            }
            for r in bases
        }
        ready = all(state is not None for state in states.values())
        phases = (
            await engines.phases()
        )  # the controller's view: why a model is not ready, replica counts
        for model_id, model in models.items():
            phase = phases.get(model_id)
            if phase is not None:
                model["phase"] = model["phase"] if model["ready"] else phase.phase
                model.update(
                    phase_detail=phase.detail,
                    replicas={"running": phase.replicas_running, "target": phase.replicas_target},
                )
            elif not model["ready"]:
                model.update(phase=UNAVAILABLE, phase_detail="no replica answered")
        chains = {name: pipeline_state(p, settings.routes, states) for name, p in pipelines.items()}
        ready = ready and all(chain["ready"] for chain in chains.values())
        return JSONResponse(
            {
                "status": "ready" if ready else "not_ready",
                "models": models,
                "pipelines": chains,
                "config_file": os.environ.get(CONFIG_FILE_ENV),
            },
            status_code=200 if ready else 503,
        )

    @app.get("/openapi.json", dependencies=protected, include_in_schema=False)
    async def openapi(request: Request) -> dict:
        # a thread: the first call imports vLLM's protocol models
        return await asyncio.to_thread(
            openapi_description,
            app,
            BODY_ENDPOINTS,
            visible(request, settings.routes),
            bool(settings.api_keys),
            sorted(visible(request, settings.pipelines)),
        )

    @app.get("/v1/models", dependencies=protected)
    async def list_models(request: Request) -> dict:
        pipelines = [pipeline_card(p) for p in visible(request, settings.pipelines).values()]
        return {
            "object": "list",
            "data": [r.card() for r in visible(request, settings.routes).values()] + pipelines,
        }

    @app.get("/v1/models/{model_id:path}", dependencies=protected)
    async def get_model(model_id: str, request: Request) -> dict:
        pipeline = (
            None if model_id in settings.routes else admitted(request, settings.pipelines, model_id)
        )
        return (
            pipeline_card(pipeline)
            if pipeline
            else _route_for(request, settings.routes, model_id).card()
        )

    async def forward(request: Request, capability: Capability) -> Response:
        body = await read_json_object(request, settings.max_request_bytes)
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
        if "messages" in body:  # chat, and tokenize or classify of a conversation
            await inline_chat_media(body, settings.media)
        key = request_key(request)
        spend = spender(limits, key)  # counts the answer's tokens, when the key has a limit
        keep_usage_header = ask_for_usage_header(body) if spend else True
        if stream_requested(body):
            if spend is None:
                return await _stream(engines.stream(route, capability, body))
            meter = StreamMeter(ask_for_usage(body))
            return await _stream(metered(engines.stream(route, capability, body), meter, spend))
        result = await engines.call(route, capability, body)
        if spend is not None and result.status_code == 200:
            headers = result.headers or {}
            spend(response_tokens(result.content, headers.get(USAGE_HEADER)))
            if not keep_usage_header:
                headers.pop(USAGE_HEADER, None)
        return _as_response(result)

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
        result = await engines.call(route, capability, body)
        return _as_response(result)

    install_oip_routes(app, settings, engines, protected[0], uploads)
    install_pipeline_routes(app, settings, engines, protected[0], limits)
    install_console(app)
    app.add_middleware(
        ObservedRequests, path="router"
    )  # outermost: ids and metrics of every answer

    # One POST endpoint per capability: JSON bodies, or multipart uploads for audio input.
    for path, capability in JSON_ENDPOINTS.items():
        app.add_api_route(
            path,
            _endpoint(forward, capability),
            methods=["POST"],
            dependencies=protected,
            name=capability.value,
        )
    for path, capability in UPLOAD_ENDPOINTS.items():
        app.add_api_route(
            path,
            _endpoint(forward_upload, capability),
            methods=["POST"],
            dependencies=protected,
            name=capability.value,
        )
    return app


def _endpoint(handler, capability: Capability):
    async def endpoint(request: Request) -> Response:
        return await handler(request, capability)

    return endpoint


def _auth_dependency(api_keys: tuple[APIKey, ...], limits: KeyLimits | None):
    async def check(request: Request) -> None:
        request.state.api_key = check_api_key(request.headers.get("authorization"), api_keys)
        if limits is not None:
            await limits.check(request.state.api_key)

    return check


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
        available = ", ".join(sorted(visible(request, routes)))
        raise APIError(
            404,
            f"model {model!r} does not exist; available: {available}",
            param="model",
            code="model_not_found",
        )
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
        try:
            if first is not None:
                yield first
            async for chunk in chunks:
                # An engine answers whole only before its first chunk (servers/base_engine.py).
                assert isinstance(chunk, str), "an EngineResponse after the stream began"
                yield chunk
        except APIError as err:  # the request timed out mid-stream
            yield err.event() + DONE_EVENT
        except (
            Exception
        ):  # the engine replica died mid-stream: say so instead of cutting the connection
            logger.exception("stream failed")
            yield (
                APIError(
                    503,
                    "the model's replica failed during the stream; retry the request",
                    code="model_unavailable",
                ).event()
                + DONE_EVENT
            )
        finally:
            await chunks.aclose()  # client gone: cancels the engine call, which aborts generation

    return ClosingStreamingResponse(relay(), media_type="text/event-stream", headers=SSE_HEADERS)
