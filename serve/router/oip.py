"""The Open Inference Protocol ("v2" of KServe, Triton, Seldon) for vision and video models.

Inputs are BYTES tensors of encoded images or videos, given as JSON strings (base64, a
``data:`` URL, or an allowed ``http(s)`` URL) or in the binary part of the body (Triton's
binary tensor extension, which ``tritonclient`` uses). Outputs are JSON tensors. Errors are
the protocol's ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import struct
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from common.input_errors import InputError
from common.media_fetch import ByteBudget, fetch_media
from common.media_usage import MediaUsage
from common.task_groups import all_or_none
from configs.oip_models import InferenceRequest, RequestInput
from serve.policy.auth import admitted, visible
from serve.policy.capacity import DeploymentCapacities
from serve.router.errors import APIError
from serve.router.routing import ModelRoute, RouterSettings, deployment_states, requested_model
from serve.router.uploads import UploadMemory, read_limited_body

MODEL_VERSION = "1"
OIP_INFER_ENDPOINT = "/v2/models/{name}/infer"  # the usage ledger's name for both infer paths
OIP_INFER_PATHS = r"/v2/models/[^/]+(/versions/[^/]+)?/infer"
MAX_CONCURRENT_FETCHES = 4  # URL inputs of one request fetched at once


def install_oip_routes(
    app: FastAPI,
    settings: RouterSettings,
    engines,
    uploads: UploadMemory,
    capacities: DeploymentCapacities,
) -> None:
    """``capacities``: the request policy's slots of each deployment; an inference takes one
    before its body is read, or is refused with the 503 at once."""

    def tensor_routes() -> dict[str, ModelRoute]:
        """Read on every request: the routes change when models are added or removed."""
        return {r.model_id: r for r in settings.routes.values() if r.tensors}

    def route_for(request: Request, name: str) -> ModelRoute:
        route = admitted(request, settings.routes, name)
        if route is not None and route.tensors:
            return route
        if route is not None:
            raise APIError(400, f"model '{name}' is not served through /v2; use /v1 for it")
        known = ", ".join(sorted(visible(request, tensor_routes())))
        raise APIError(404, f"model '{name}' does not exist; /v2 models: {known}")

    async def all_ready(routes) -> bool:
        return all(
            state is not None for state in (await deployment_states(engines, routes)).values()
        )

    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "rayserve-platform", "version": "2", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        is_ready = await all_ready(tensor_routes().values())
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str = MODEL_VERSION) -> dict:
        route = _versioned(route_for(request, name), version)
        return {
            "name": route.model_id,
            "versions": [MODEL_VERSION],
            "platform": f"rayserve-platform/{route.model_type}",
            **_tensors(route),
        }

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_is_ready(
        name: str, request: Request, version: str = MODEL_VERSION
    ) -> JSONResponse:
        route = _versioned(route_for(request, name), version)
        is_ready = await all_ready([route])
        return JSONResponse(
            {"name": route.model_id, "ready": is_ready}, status_code=200 if is_ready else 503
        )

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = MODEL_VERSION) -> JSONResponse:
        route = _versioned(route_for(request, requested_model(request.headers, name)), version)
        limit = settings.tensor_request_bytes(route)  # this model's, before reading the body
        try:
            with capacities.admit(route, own_url=False), uploads.hold() as held:
                raw = await read_limited_body(request, held.add_body(request, limit))
                header, binary = _split_body(
                    raw, request.headers.get("inference-header-content-length")
                )
                inference = _parse(header)
                tensor = _the_input(route, inference)
                media = await _media(tensor, binary, route, settings, held, limit)
                wanted = _requested_outputs(route, inference)
                body = {"inputs": media, "parameters": inference.parameters}
                result = await engines.call(route, route.capabilities[0], body)
        except InputError as err:
            raise APIError.from_input(err) from None
        payload = json.loads(result.content)
        if result.status_code != 200:
            raise APIError(
                result.status_code, payload.get("error", {}).get("message", "inference failed")
            )
        outputs = [o for o in payload["outputs"] if not wanted or o["name"] in wanted]
        answer = {"model_name": route.model_id, "model_version": MODEL_VERSION, "outputs": outputs}
        if inference.id is not None:
            answer["id"] = inference.id
        # the engine's media measures, for the request policy's ledger
        return JSONResponse(answer, headers=MediaUsage.of_headers(result.headers).headers())


def _versioned(route: ModelRoute, version: str) -> ModelRoute:
    if version != MODEL_VERSION:
        raise APIError(
            404, f"model '{route.model_id}' has no version '{version}'; versions: {MODEL_VERSION}"
        )
    return route


def _tensors(route: ModelRoute) -> dict[str, list[dict[str, Any]]]:
    """The tensors of a model served through /v2 (``route_for`` admits no other)."""
    assert route.tensors is not None
    return route.tensors


def _split_body(
    raw: bytes | bytearray, header_length: str | None
) -> tuple[bytes | bytearray, bytes | bytearray]:
    """The JSON header and the binary tensor data after it (binary tensor extension)."""
    if header_length is None:
        return raw, b""
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise APIError(400, "Inference-Header-Content-Length does not fit the body")
    return raw[: int(header_length)], raw[int(header_length) :]


def _parse(header: bytes | bytearray) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise APIError(
            400, f"invalid inference request: {where + ': ' if where else ''}{first['msg']}"
        ) from None


def _the_input(route: ModelRoute, inference: InferenceRequest) -> RequestInput:
    spec = _tensors(route)["inputs"][0]
    if len(inference.inputs) != 1 or inference.inputs[0].name != spec["name"]:
        names = [i.name for i in inference.inputs]
        raise APIError(
            400, f"model '{route.model_id}' takes one input named '{spec['name']}'; got {names}"
        )
    tensor = inference.inputs[0]
    if tensor.datatype != "BYTES":
        raise APIError(
            400,
            f"input '{tensor.name}' must have datatype BYTES (encoded media), "
            f"not {tensor.datatype}",
        )
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise APIError(
            400,
            f"input '{tensor.name}' must have shape [n] with n >= 1 (one element per "
            f"{spec['name']}), not {tensor.shape}",
        )
    return tensor


def _requested_outputs(route: ModelRoute, inference: InferenceRequest) -> set[str]:
    known = {o["name"] for o in _tensors(route)["outputs"]}
    wanted = {o.name for o in inference.outputs}
    if wanted - known:
        raise APIError(
            400,
            f"unknown output(s) {sorted(wanted - known)}; "
            f"model '{route.model_id}' gives {sorted(known)}",
        )
    return wanted


async def _media(
    tensor: RequestInput,
    binary: bytes | bytearray,
    route: ModelRoute,
    settings: RouterSettings,
    held,
    request_limit: int,
) -> list[bytes | bytearray]:
    """The input's elements as bytes. URLs are fetched only once the shape is known to match,
    a few at a time, holding no more than the request's own limit for this model."""
    size = tensor.parameters.get("binary_data_size")
    elements: list[bytes | bytearray]
    if size is not None:
        if tensor.data is not None or not isinstance(size, int) or size != len(binary):
            raise APIError(
                400,
                f"input '{tensor.name}': binary_data_size {size} does not match the "
                f"{len(binary)} binary bytes after the JSON header",
            )
        elements = _split_binary_bytes(binary)
        _check_shape(tensor, len(elements))
    else:
        flat = _flatten(tensor.data)
        _check_shape(tensor, len(flat))
        budget = settings.media.budget(flat)  # a 400 when they name too many URLs
        if budget.urls:
            held.add(request_limit)  # fetched media: at most the request's limit in all
        fetches = _Fetches(request_limit, tensor.name, budget)
        elements = await all_or_none(_element(e, settings, fetches) for e in flat)
    limit = route.max_upload_bytes
    for index, element in enumerate(elements):
        if limit and len(element) > limit:
            raise APIError(
                413,
                f"element {index} of '{tensor.name}' is {len(element)} bytes; the limit is {limit}",
            )
    return elements


def _check_shape(tensor: RequestInput, elements: int) -> None:
    if elements != tensor.shape[0] or elements != math.prod(tensor.shape):
        raise APIError(
            400, f"input '{tensor.name}' has shape {tensor.shape} but {elements} elements"
        )


def _split_binary_bytes(binary: bytes | bytearray) -> list[bytes | bytearray]:
    """Triton's binary BYTES layout: each element is a 4-byte little-endian length, then the
    bytes."""
    elements: list[bytes | bytearray] = []
    offset = 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise APIError(400, "truncated BYTES element in the binary data")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise APIError(400, "a BYTES element runs past the end of the binary data")
        elements.append(binary[offset : offset + length])
        offset += length
    return elements


def _flatten(data: Any) -> list[Any]:
    if data is None:
        raise APIError(400, "input has no data (neither JSON 'data' nor binary_data_size)")
    if not isinstance(data, list):
        return [data]
    return [
        leaf for item in data for leaf in (_flatten(item) if isinstance(item, list) else [item])
    ]


class _Fetches:
    """The URL inputs of one request: a few fetched at a time, their bytes counted against its
    limit."""

    def __init__(self, limit: int, name: str, budget: ByteBudget):
        self.slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
        self.limit, self.name, self.total = limit, name, 0
        self.budget = budget  # the media policy's, counted as the bytes arrive

    def count(self, nbytes: int) -> None:
        self.total += nbytes
        if self.total > self.limit:
            raise APIError(413, f"the inputs of '{self.name}' hold more than {self.limit} bytes")


async def _element(element: Any, settings: RouterSettings, fetches: _Fetches) -> bytes:
    """A JSON BYTES element: a data: or http(s) URL (fetched under the media policy) or base64."""
    if not isinstance(element, str):
        raise APIError(
            400, f"BYTES elements must be strings (base64 or a URL), not {type(element).__name__}"
        )
    if element.startswith(("data:", "http://", "https://")):
        async with fetches.slots:
            data, _ = await fetch_media(element, settings.media, fetches.budget)
        fetches.count(len(data))
        return data
    if "://" in element:
        raise APIError(
            400,
            "BYTES elements must be base64 media or data:/http(s) URLs; other schemes "
            "(file://, ...) are refused",
        )
    try:  # a file path is not valid base64 (or decodes to bytes that are no image): never read
        return base64.b64decode(element, validate=True)
    except binascii.Error:
        raise APIError(
            400,
            "a BYTES element is neither base64 media nor a data:/http(s) URL; file paths "
            "are refused",
        ) from None
