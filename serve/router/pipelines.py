"""``POST /v1/pipelines``: run a pipeline of the YAML, each step a call to its model's engine
through the same Serve handles the router uses (no HTTP back to the router).

The request brings the pipeline's inputs (``audio`` or ``image`` as base64, a ``data:`` URL or
an allowed ``http(s)`` URL; ``text``; ``documents``); the answer has the final values, each
step's output and latency, and a ``Server-Timing`` header with the steps' durations.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from common.engine_response import EngineResponse
from common.input_errors import InputError
from common.media_fetch import ByteBudget, MediaFetchPolicy, fetch_media
from common.media_usage import MediaUsage
from configs.capabilities import Capability
from configs.pipeline_models import PipelineConfig, PipelineStep
from serve.policy.auth import admitted, request_key, visible
from serve.policy.budgets import check_budget
from serve.policy.key_limits import RESERVATION_SLACK_S, KeyLimits
from serve.policy.metering import (
    USAGE_HEADER,
    TokenCounts,
    record_answer,
    reserved_tokens,
    response_usage,
)
from serve.router.errors import APIError
from serve.router.routing import ModelRoute, RouterSettings
from serve.router.uploads import UploadMemory, read_json_object
from serve.usage.database import usage_database

CREATED = int(time.time())
TEXT_LIMIT = 100_000  # characters of text or of all documents together
MAX_DOCUMENTS = 1000
# A step's tokens reserved against the request's key (``KeyLimits.reserve``): what settles them.
StepReservation = Callable[[int], Awaitable[Callable[[int], None] | None]]
# A step's answer for the usage ledger: its model, status, token counts, latency and media.
StepRecord = Callable[[str, int, TokenCounts, float, MediaUsage], None]


class StepFailed(APIError):
    """A step's engine answered with an error: its status (4xx stay 4xx), naming the step."""


def install_pipeline_routes(
    app: FastAPI,
    settings: RouterSettings,
    engines: Any,
    uploads: UploadMemory,
    limits: KeyLimits | None = None,
) -> None:
    """``limits``: the platform's per-key limits (the request policy counted the run as one
    request), against which each step reserves and is charged its tokens; ``uploads``: the
    replica's memory for uploads, which the inputs' downloads are held against until the run
    ends."""

    @app.post("/v1/pipelines")
    async def run_pipeline(request: Request) -> JSONResponse:
        body = await read_json_object(request, settings.max_request_bytes)
        pipeline = _pipeline_for(request, settings.pipelines, body.get("model"))
        if settings.usage_database:  # a key past its token budget runs no step
            check_budget(usage_database(settings.usage_database), request_key(request))
        reserve = None
        if limits is not None:
            hold_s = pipeline.timeout_s + RESERVATION_SLACK_S
            reserve = functools.partial(limits.reserve, request_key(request), hold_s=hold_s)
        run = PipelineRun(
            pipeline, settings.routes, engines, reserve, _step_ledger(request, settings)
        )
        try:
            with uploads.hold() as held:
                downloads = settings.media.budget(_urls(body))
                downloads.hold = held.add
                async with asyncio.timeout(pipeline.timeout_s):
                    result = await run.run(body, settings.media, downloads)
        except TimeoutError:
            raise APIError(
                504,
                f"{pipeline.model_id!r} ran past its timeout_s ({pipeline.timeout_s:g} s) in "
                f"{run.current}",
                code="timeout",
            ) from None
        return JSONResponse(result, headers={"Server-Timing": run.server_timing()})


def pipeline_card(pipeline: PipelineConfig) -> dict[str, Any]:
    """The pipeline's ``/v1/models`` entry: a model of type ``pipeline``, with its inputs and
    steps."""
    return {
        "id": pipeline.model_id,
        "object": "model",
        "created": CREATED,
        "owned_by": "rayserve-platform",
        "type": "pipeline",
        "capabilities": [Capability.PIPELINE.value],
        "inputs": pipeline.inputs(),
        "steps": [{"task": step.task, "model": step.model} for step in pipeline.steps],
    }


def pipeline_state(
    pipeline: PipelineConfig,
    routes: Mapping[str, ModelRoute],
    deployments: Mapping[str, dict | None],
) -> dict[str, Any]:
    """Ready when every step's model is (``deployments``: each deployment's stats, None when not
    ready)."""
    waiting = sorted(
        {
            step.model
            for step in pipeline.steps
            if step.model not in routes
            or deployments.get(routes[step.model].deployment_name) is None
        }
    )
    if not waiting:
        return {
            "ready": True,
            "phase": "ready",
            "phase_detail": f"{len(pipeline.steps)} steps ready",
        }
    return {
        "ready": False,
        "phase": "unavailable",
        "phase_detail": f"steps' models not ready: {', '.join(waiting)}",
    }


def _pipeline_for(
    request: Request, pipelines: Mapping[str, PipelineConfig], model: Any
) -> PipelineConfig:
    if model is None or model == "":
        raise APIError(
            400, "'model' is required: the pipeline's id", param="model", code="missing_model"
        )
    pipeline = admitted(request, pipelines, model)
    if pipeline is None:
        names = sorted(visible(request, pipelines))
        raise APIError(
            404,
            f"pipeline {model!r} does not exist; pipelines: {', '.join(names) or 'none'}",
            param="model",
            code="model_not_found",
        )
    return pipeline


class PipelineRun:
    """One request through one pipeline: the values so far, and what each step took."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        routes: Mapping[str, ModelRoute],
        engines: Any,
        reserve: StepReservation | None = None,
        record: StepRecord | None = None,
    ):
        self.pipeline, self.routes, self.engines = pipeline, routes, engines
        self.record = record  # each step's answer into the usage ledger (None: no ledger)
        # each step's tokens reserved against the request's key before its call, as a request's
        # are at admission (concurrent runs cannot all pass), and settled on its real count
        self.reserve = reserve
        self.values: dict[str, Any] = {}
        self.steps: list[dict[str, Any]] = []
        self.current = "reading the inputs"  # what the run is doing, for errors and timeouts

    async def run(
        self, body: dict[str, Any], media: MediaFetchPolicy, downloads: ByteBudget
    ) -> dict[str, Any]:
        """``downloads``: what the inputs' URLs may fetch in all (and the memory it is held in)."""
        await self._read_inputs(body, media, downloads)
        for index, step in enumerate(self.pipeline.steps):
            self.current = f"steps[{index}] ({step.task}, {step.model})"
            started = time.perf_counter()
            output = await STEP_RUNNERS[step.task](self, step, self._route(step))
            self.values.update(output)
            self.steps.append(
                {
                    "task": step.task,
                    "model": step.model,
                    "output": _shown(output),
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                }
            )
        produced = set().union(*(step.spec.gives for step in self.pipeline.steps))
        return {
            "object": "pipeline.result",
            "model": self.pipeline.model_id,
            "output": _shown({k: v for k, v in self.values.items() if k in produced}),
            "steps": self.steps,
        }

    def server_timing(self) -> str:
        """The steps' durations as a ``Server-Timing`` header (browsers' dev tools show it)."""
        return ", ".join(
            f'step{i};dur={s["latency_ms"]};desc="{s["task"]} {s["model"]}"'
            for i, s in enumerate(self.steps)
        )

    async def _read_inputs(
        self, body: dict[str, Any], media: MediaFetchPolicy, downloads: ByteBudget
    ) -> None:
        wanted = self.pipeline.inputs()
        stray = sorted(set(body) - set(wanted) - {"model"})
        if stray:
            raise APIError(
                400,
                f"{self.pipeline.model_id!r} takes {', '.join(wanted)}; not {', '.join(stray)}",
                param=stray[0],
            )
        for name in wanted:
            value = body.get(name)
            if value is None:
                raise APIError(
                    400,
                    f"{name!r} is required by {self.pipeline.model_id!r}",
                    param=name,
                    code="missing_input",
                )
            self.values[name] = await _READERS[name](name, value, media, downloads)

    def _route(self, step: PipelineStep) -> ModelRoute:
        route = self.routes.get(step.model)
        if route is None:  # the model's application is gone or not yet running
            raise APIError(
                503,
                f"{self.current}: model {step.model!r} is not deployed",
                code="model_unavailable",
            )
        return route

    async def call(self, route: ModelRoute, capability: Capability, body: dict[str, Any]) -> Any:
        body = {"model": route.model_id, **body}
        reserve = reserved_tokens(body, route.max_context_tokens)
        settle = await self.reserve(reserve) if self.reserve is not None else None
        spent = TokenCounts()  # the engine refused it, or never had it: the reservation returns
        media = MediaUsage()
        status, started = 499, time.perf_counter()  # 499: the engine never answered
        try:
            result = await self.engines.call(route, capability, body)
            status, spent = result.status_code, _spent_tokens(result)
            media = MediaUsage.of_headers(result.headers)
        except asyncio.CancelledError:  # cut by the timeout: its usage never came
            spent = TokenCounts(0, reserve)
            raise
        finally:
            if settle is not None:
                settle(spent.total)
            if self.record is not None:
                latency_s = time.perf_counter() - started
                self.record(route.model_id, status, spent, latency_s, media)
        if result.status_code != 200:
            raise StepFailed(
                result.status_code,
                f"{self.current}: {result.error_message()}",
                code="pipeline_step_failed",
            )
        return result.content if capability is Capability.SPEECH else json.loads(result.content)


def _spent_tokens(result: EngineResponse) -> TokenCounts:
    """The tokens a step's answer counted (none when it failed)."""
    if result.status_code != 200:
        return TokenCounts()
    return response_usage(result.content, (result.headers or {}).get(USAGE_HEADER))


def _step_ledger(request: Request, settings: RouterSettings) -> StepRecord:
    """What records each step's answer in the per-key metrics and the usage ledger (when there
    is one), under the request's key and the pipeline's endpoint (the policy records no
    ``/v1/pipelines`` request itself: each step once)."""
    usage = usage_database(settings.usage_database) if settings.usage_database else None
    key = request_key(request)

    def record(
        model: str, status: int, counts: TokenCounts, latency_s: float, media: MediaUsage
    ) -> None:
        record_answer(usage, key, model, "/v1/pipelines", status, counts, latency_s, media)

    return record


async def _media(name: str, value: Any, media: MediaFetchPolicy, downloads: ByteBudget) -> bytes:
    """Audio or an image: a URL the media policy allows (data: always), or base64."""
    if not isinstance(value, str) or not value:
        raise APIError(
            400, f"{name!r} must be base64, a data: URL or an allowed http(s) URL", param=name
        )
    try:
        if value.startswith(("data:", "http://", "https://")):
            return (await fetch_media(value, media, downloads))[0]
        if len(value) > media.max_bytes * 4 // 3 + 4:
            raise APIError(
                413, f"{name!r} is over {media.max_bytes} bytes", param=name, code="input_too_large"
            )
        return base64.b64decode(value, validate=True)
    except InputError as err:
        raise APIError.from_input(err, param=name) from None
    except (binascii.Error, ValueError):
        raise APIError(400, f"{name!r} is not valid base64", param=name) from None


async def _text(name: str, value: Any, *_: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > TEXT_LIMIT:
        raise APIError(
            400, f"{name!r} must be non-empty text of at most {TEXT_LIMIT} characters", param=name
        )
    return value


async def _documents(name: str, value: Any, *_: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_DOCUMENTS
        or not all(isinstance(d, str) for d in value)
        or sum(map(len, value)) > TEXT_LIMIT
    ):
        raise APIError(
            400,
            f"{name!r} must be a list of 1 to {MAX_DOCUMENTS} strings, {TEXT_LIMIT} characters "
            f"in all",
            param=name,
        )
    return value


def _urls(body: dict[str, Any]) -> list[Any]:
    """The inputs that may name media (counted against the policy's URLs before any fetch)."""
    return [body.get(name) for name in ("audio", "image")]


_READERS: dict[str, Callable[..., Awaitable[Any]]] = {
    "audio": _media,
    "image": _media,
    "text": _text,
    "documents": _documents,
}


async def _transcribe(run: PipelineRun, step: PipelineStep, route: ModelRoute) -> dict[str, Any]:
    options = {"language": step.language} if step.language else {}
    answer = await run.call(
        route,
        Capability.TRANSCRIPTION,
        {"file": run.values["audio"], "response_format": "json", **options},
    )
    return {"text": answer["text"]}


async def _chat(run: PipelineRun, step: PipelineStep, route: ModelRoute) -> dict[str, Any]:
    context = run.values.get("context")
    default = "Answer from this context:\n{context}\n\nQuestion: {text}" if context else "{text}"
    prompt = (
        (step.prompt or default)
        .replace("{context}", context or "")
        .replace("{text}", run.values["text"])
    )
    messages = ([{"role": "system", "content": step.system}] if step.system else []) + [
        {"role": "user", "content": prompt}
    ]
    options = {
        k: v
        for k, v in (("max_tokens", step.max_tokens), ("temperature", step.temperature))
        if v is not None
    }
    answer = await run.call(route, Capability.CHAT, {"messages": messages, **options})
    return {"text": answer["choices"][0]["message"]["content"] or ""}


async def _speak(run: PipelineRun, step: PipelineStep, route: ModelRoute) -> dict[str, Any]:
    audio = await run.call(
        route,
        Capability.SPEECH,
        {"input": run.values["text"], "voice": step.voice, "response_format": "wav"},
    )
    return {"audio": audio}


async def _image_outputs(
    run: PipelineRun, route: ModelRoute, capability: Capability, **parameters
) -> dict:
    answer = await run.call(
        route, capability, {"inputs": [run.values["image"]], "parameters": parameters}
    )
    return {output["name"]: output["data"] for output in answer["outputs"]}


async def _caption(run: PipelineRun, step: PipelineStep, route: ModelRoute) -> dict[str, Any]:
    return {"text": (await _image_outputs(run, route, Capability.IMAGE_TO_TEXT))["captions"][0]}


async def _classify_image(
    run: PipelineRun, step: PipelineStep, route: ModelRoute
) -> dict[str, Any]:
    outputs = await _image_outputs(run, route, Capability.IMAGE_CLASSIFICATION, top_k=step.top_n)
    labels, scores = outputs["labels"], outputs["scores"]
    return {
        "text": ", ".join(
            f"{label} ({score:.2f})" for label, score in zip(labels, scores, strict=True)
        )
    }


async def _detect(run: PipelineRun, step: PipelineStep, route: ModelRoute) -> dict[str, Any]:
    detections = json.loads(
        (await _image_outputs(run, route, Capability.OBJECT_DETECTION))["detections"][0]
    )
    found = [f"{d['label']} ({d['score']:.2f})" for d in detections]
    return {"text": "detected: " + (", ".join(found) if found else "nothing")}


async def _rerank(run: PipelineRun, step: PipelineStep, route: ModelRoute) -> dict[str, Any]:
    answer = await run.call(
        route,
        Capability.RERANK,
        {"query": run.values["text"], "documents": run.values["documents"], "top_n": step.top_n},
    )
    return {"context": "\n".join(run.values["documents"][r["index"]] for r in answer["results"])}


STEP_RUNNERS = {
    "transcribe": _transcribe,
    "chat": _chat,
    "speak": _speak,
    "caption": _caption,
    "classify-image": _classify_image,
    "detect": _detect,
    "rerank": _rerank,
}


def _shown(values: dict[str, Any]) -> dict[str, Any]:
    """Values as JSON: audio and images as base64, with the audio's format."""
    shown = {}
    for name, value in values.items():
        if isinstance(value, bytes):
            shown[name] = base64.b64encode(value).decode()
            if name == "audio":
                shown["audio_format"] = "wav"
        else:
            shown[name] = value
    return shown
