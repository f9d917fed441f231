"""Adapter and prefix affinity on the one-hop path: HAProxy asks this deployment which replica gets
a request.

Behind Ray's HAProxy, ``/models/<model_id>/v1/...`` goes to a replica by least connections,
blind to which replicas hold a LoRA adapter. For a vLLM model with variants the application
also runs this deployment as Ray's ingress request router: HAProxy's Lua action posts each
request's body to ``/internal/route`` here, this picks the replica through Serve's multiplexed
routing (the one the shared ``/v1`` uses: replicas holding the variant first), and HAProxy
forwards the request to that replica's own port (with the variant in Serve's multiplexed-model
header), where the replica records the variant it serves as loaded (``VLLMIngressDeployment``).
The body goes to ``choose_replica`` too, as Ray Serve LLM's ``LLMRouter`` passes it: a model
routed by prefix gets its request router's pick among those replicas (``prefix_affinity.py``).
The tokens still go from the replica to HAProxy to the client: this deployment answers one small
request per request.

A wrong or missing pick costs affinity, never the request: a body this cannot read (cut at
HAProxy's buffer, not JSON, no variant named) gets Serve's load-balanced pick, and the replica
serves any of the model's adapters. Ray's contract (``ray.serve.llm``'s ``LLMRouter`` is the
other user): 200 ``{"host", "port", "replica_id", "request_headers"}``; any other answer makes
HAProxy answer 503.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from ray import serve
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

PICK_ONLY = "pick_only"  # choose_replica's keyword: the request goes through HAProxy, not here
MULTIPLEXED_HEADER = "serve_multiplexed_model_id"  # what the replica reads the variant from
# A body HAProxy cut at its buffer is not JSON: its top-level "model" may still be in the part
# that came. Inside a JSON string a quote is escaped, so this matches no text of a message.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')

# HAProxy posts at most its buffer of each request (tune.bufsize, 16 KiB by default); this port
# needs no key, so a caller sending more gets no more than this read, whatever it sends.
MAX_ROUTED_BODY_BYTES = 64 * 1024

route_app = FastAPI()


async def body_head(request: Request, limit: int = MAX_ROUTED_BODY_BYTES) -> bytes:
    """The first ``limit`` bytes of the body; the rest is never read."""
    head = bytearray()
    async for piece in request.stream():
        head += piece[: limit - len(head)]
        if len(head) >= limit:
            break
    return bytes(head)


def read_body(body: bytes) -> tuple[Any, dict[str, Any] | None]:
    """The body's top-level ``"model"``, and the body itself where it is a JSON object (a body
    HAProxy cut short is not: its model may still be read, its prompt is not)."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (cut short, say), or nested past Python's stack
        found = _MODEL_FIELD.search(body)
        return (found.group(1).decode() if found else None), None
    return (parsed.get("model"), parsed) if isinstance(parsed, dict) else (None, None)


def requested_variant(model: Any, model_id: str, variants: frozenset[str]) -> str:
    """The variant of ``model_id`` that a body's ``model`` asks for
    (``"<model_id>:<variant>"`` of one of ``variants``), or ""."""
    if not isinstance(model, str) or not model.startswith(
        f"{model_id}:"
    ):  # the base model, another, none
        return ""
    variant = model[len(model_id) + 1 :]
    return variant if variant in variants else ""


@serve.ingress(route_app)
class VariantRouter:
    def __init__(self, engine: DeploymentHandle, model_id: str, variants: list[str]):
        self.engine, self.model_id, self.variants = engine, model_id, frozenset(variants)

    @route_app.post("/internal/route")
    async def route(self, request: Request) -> dict[str, Any]:
        model, body = read_body(await body_head(request))
        variant = requested_variant(model, self.model_id, self.variants)
        handle = self.engine.options(multiplexed_model_id=variant) if variant else self.engine
        try:
            # _reserve=False: the request itself goes through HAProxy, not this handle, so no
            # slot is held on the replica for it (as Ray Serve LLM's router does); the body, for
            # a request router that reads the prompt (Serve's default pick ignores both).
            routed_by = [body] if body else []
            async with handle.choose_replica(
                *routed_by, _reserve=False, **{PICK_ONLY: True}
            ) as selection:
                replica = selection._replica
                if replica.backend_http_endpoint is None:
                    raise RuntimeError(f"replica {selection.replica_id} has no HTTP port")
                host, port = replica.backend_http_endpoint
                replica_id = replica.replica_id.to_full_id_str()
        except (RuntimeError, DeploymentUnavailableError) as exc:
            raise HTTPException(503, str(exc)) from exc
        answer: dict[str, Any] = {"host": host, "port": port, "replica_id": replica_id}
        if variant:
            answer["request_headers"] = {MULTIPLEXED_HEADER: variant}
        return answer
