"""The router's OpenAPI description (``GET /openapi.json``, behind the API key).

The endpoints read their bodies themselves (to bound a body's size before parsing it), so
FastAPI cannot see what they take; this adds every request body: vLLM's protocol models for
the ``/v1`` JSON endpoints (the same models the router validates with), OpenAI's multipart
forms for audio uploads, and the protocol's tensors for ``/v2`` inference. ``model`` (and the
path's model names) list the models the caller's key may use for that endpoint, so clients
and fuzzers generated from the description reach real models.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from configs.oip_models import InferenceRequest
from configs.open_api_models import request_adapter
from configs.pipeline_models import PipelineRequest
from configs.server_models import Capability
from serve.router.routing import ModelRoute

COMPONENTS = "#/components/schemas/{model}"
INFER = "infer"
PIPELINE_PATH = "/v1/pipelines"
ERRORS_V1 = 'An error in OpenAI\'s shape: {"error": {"message", "type", "param", "code"}}'
ERRORS_V2 = 'An error in the Open Inference Protocol\'s shape: {"error": "<message>"}'
PATH_MODEL_PARAMS = ("model_id", "name")  # path parameters that name a model
# What a request model's validators demand beyond its fields' schemas, said in JSON Schema.
ONE_OF_REQUIRED = {"CompletionRequest": ["prompt", "prompt_embeds"]}


@functools.cache
def _body_schemas(capabilities: tuple[Capability, ...]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each capability's body schema (a reference, or a union of them) and the shared
    definitions."""
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        (c.value, "validation", request_adapter(c)) for c in capabilities
    ]
    inputs.append((INFER, "validation", TypeAdapter(InferenceRequest)))
    refs, definitions = TypeAdapter.json_schemas(inputs, ref_template=COMPONENTS)
    return {key: schema for (key, _), schema in refs.items()}, definitions.get("$defs", {})


def openapi_description(
    app: FastAPI,
    endpoints: Mapping[str, tuple[Capability, str]],
    routes: Mapping[str, ModelRoute],
    secured: bool,
    pipelines: list[str] | None = None,
) -> dict[str, Any]:
    """The app's description with each body; ``endpoints``: path -> (capability, media type) of the
    endpoints that read a body themselves; ``routes`` and ``pipelines``: the models and pipelines
    the caller may use (None: the app has no pipeline route)."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    bodies, definitions = _body_schemas(tuple(capability for capability, _ in endpoints.values()))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(copy.deepcopy(definitions))
    for path, (capability, media_type) in endpoints.items():
        models = _serving(routes, capability)
        schema = _with_model(bodies[capability.value], schemas, models)
        if media_type == "multipart/form-data":
            schema = _upload_form(schema, schemas)
        doc["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {media_type: {"schema": schema}},
        }
    if pipelines is not None:
        schema = TypeAdapter(PipelineRequest).json_schema(ref_template=COMPONENTS)
        schema["properties"]["model"] = (
            {"type": "string", "enum": pipelines} if pipelines else {"type": "string"}
        )
        doc["paths"][PIPELINE_PATH]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    tensor_models = sorted(r.model_id for r in routes.values() if r.tensors)
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            _name_models(operation, tensor_models if path.startswith("/v2") else sorted(routes))
            operation["responses"].pop(
                "422", None
            )  # FastAPI's; errors here are 4xx in the endpoint's shape
            operation["responses"]["4XX"] = {
                "description": ERRORS_V2 if path.startswith("/v2") else ERRORS_V1
            }
            if path.endswith("/infer"):
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": bodies[INFER]}},
                }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        doc["paths"]["/health"]["get"]["security"] = []
    return doc


def _serving(routes: Mapping[str, ModelRoute], capability: Capability) -> list[str]:
    return sorted(name for name, route in routes.items() if capability in route.capabilities)


def _with_model(schema: dict, schemas: dict[str, dict], models: list[str]) -> dict:
    """``schema`` whose (required) ``model`` is one of ``models``: each referenced request model is
    used by this endpoint alone, so its component is narrowed in place."""
    for ref in schema.get("anyOf", [schema]):
        component = schemas[ref["$ref"].rsplit("/", 1)[1]]
        component["properties"]["model"] = (
            {"type": "string", "enum": models} if models else {"type": "string"}
        )
        component["required"] = sorted(set(component.get("required", [])) | {"model"})
        if component.get("title") in ONE_OF_REQUIRED:
            component["anyOf"] = [
                {"required": [field]} for field in ONE_OF_REQUIRED[component["title"]]
            ]
    return schema


def _upload_form(schema: dict, schemas: dict[str, dict]) -> dict:
    """A multipart form: the request model's fields beside the uploaded ``file``."""
    fields = schemas[schema["$ref"].rsplit("/", 1)[1]]
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {**fields["properties"], "file": {"type": "string", "format": "binary"}},
        "required": sorted(set(fields.get("required", [])) | {"file"}),
    }


def _name_models(operation: dict, models: list[str]) -> None:
    """Path parameters naming a model list the models it may name; a version is always "1"."""
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path" and parameter["name"] in PATH_MODEL_PARAMS and models:
            parameter["schema"] = {"type": "string", "enum": models}
        elif parameter["in"] == "path" and parameter["name"] == "version":
            parameter["schema"] = {"type": "string", "enum": ["1"]}
