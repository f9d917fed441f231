"""Open Inference Protocol output tensors from per-input task results, shared by the
vision and video engines."""

from __future__ import annotations

import json
from typing import Any

from common.engine_response import EngineResponse


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def label_score_tensors(results: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``labels`` (BYTES) and ``scores`` (FP32), each ``[inputs, k]``, best first."""
    k = min(len(r) for r in results)
    labels = [item["label"] for r in results for item in r[:k]]
    scores = [float(item["score"]) for r in results for item in r[:k]]
    return [
        tensor("labels", "BYTES", [len(results), k], labels),
        tensor("scores", "FP32", [len(results), k], scores),
    ]


def json_tensor(name: str, results: list[Any]) -> dict[str, Any]:
    """One JSON document per input, as a BYTES tensor of shape ``[inputs]``."""
    return tensor(
        name, "BYTES", [len(results)], [json.dumps(r, separators=(",", ":")) for r in results]
    )


def outputs_response(outputs: list[dict[str, Any]]) -> EngineResponse:
    return EngineResponse.json({"outputs": outputs})
