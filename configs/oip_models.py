"""Open Inference Protocol (KServe/Triton "v2") request models, and the per-request
parameters vision and video models accept."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None  # absent when the tensor travels in the binary part of the body


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] = Field(default_factory=list)


class MediaParameters(BaseModel):
    """Request ``parameters`` a vision or video model reads; anything else is refused."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(default=None, ge=1, le=1000)
    threshold: float | None = Field(default=None, ge=0, le=1)
    candidate_labels: list[str] | None = Field(default=None, min_length=1, max_length=256)
    prompt: str | None = Field(default=None, max_length=1000)
    # parameters Triton clients send on every request
    binary_data_output: bool | None = None
    sequence_id: int | None = None
    priority: int | None = None
    timeout: int | None = None
