"""Each replica's GPU memory, estimated from the model's files before anything starts, and checked
against the GPU it gets (``--plan``, ``--dry-run`` and the fit check before a deploy).

vLLM takes ``gpu_memory_utilization`` of the whole GPU (or, with ``kv_cache_memory_bytes``, its
weights plus that) and must fit in it on each GPU: its shard of the weights, the activations of
its profile run (``max_num_batched_tokens`` tokens, and logits for ``max_num_seqs``), CUDA graphs
and context, and a KV cache that holds at least one sequence of ``max_model_len`` (vLLM refuses
to start otherwise); what is left holds more sequences. A transformers engine holds its weights
plus its activations, within its GPU share. A group's replica holds all of its models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from builders.model_architecture import (
    DTYPE_BYTES,
    kv_bytes_per_token,
    parameter_count,
    read_model_config,
    stored_weight_bytes,
    text_config,
)
from common.serve_options import replica_shape
from configs import DeploymentSpec
from configs.server_models import BaseModelEntry
from configs.vllm_models import VLLMModelEntry

GIB = 1024**3
# Memory CUDA reports for each GPU, by the names --gpu-type takes.
GPU_MEMORY_GIB = {
    "T4": 15.0,
    "L4": 22.5,
    "A10G": 22.5,
    "L40S": 45.0,
    "A100-40GB": 40.0,
    "A100-80GB": 80.0,
    "H100-80GB": 79.6,
    "H200": 140.4,
}
# Ray's accelerator_type resource of a node -> the GPU type above.
RAY_ACCELERATOR_TYPES = {
    "T4": "T4",
    "L4": "L4",
    "A10G": "A10G",
    "L40S": "L40S",
    "A100-40G": "A100-40GB",
    "A100-80G": "A100-80GB",
    "H100": "H100-80GB",
    "H200": "H200",
}
CUDA_CONTEXT_BYTES = (
    GIB // 2
)  # per process and GPU, outside torch's allocator (context, cuBLAS workspaces)
CUDA_GRAPH_BYTES = GIB // 2  # vLLM's captured decode graphs (none with enforce_eager)
TRANSFORMERS_ACTIVATION_FRACTION = 0.2  # a forward pass of a batch, against the weights it runs
LOGIT_BYTES = 8  # float32 logits and their probabilities, per vocabulary entry and sampled sequence


@dataclass(frozen=True)
class ModelMemory:
    """One model's memory on each GPU of its replica, in bytes; None where the files are out of
    reach."""

    model_id: str
    needs: int | None  # the least it runs in
    takes: int | None  # what it holds once running (vLLM: all of its budget)
    budget: int | None  # what it may take (vLLM: gpu_memory_utilization x the GPU)
    kv_sequences: int | None = None  # full-length sequences its KV cache holds (vLLM)
    detail: str = ""


def estimate_replica(spec: DeploymentSpec, gpu_bytes: int | None) -> list[ModelMemory]:
    """The memory of each model of one replica of ``spec`` on each of its GPUs (none on the CPU)."""
    share = replica_shape(spec.options).bundles[0][0]
    if not share:
        return []
    share_bytes = int(min(share, 1) * gpu_bytes) if gpu_bytes else None
    return [
        _vllm_memory(m, gpu_bytes, share_bytes)
        if isinstance(m, VLLMModelEntry)
        else _transformers_memory(m, share_bytes)
        for m in spec.models
    ]


def replica_problems(spec: DeploymentSpec, models: list[ModelMemory], gpu_bytes: int) -> list[str]:
    """Why a replica cannot run (empty: it can): a model past its budget, or models past the
    share."""
    problems = [
        f"{spec.name}: {m.model_id} needs {_gib(m.needs)} GiB per GPU ({m.detail}) but may take "
        f"{_gib(m.budget)} GiB"
        for m in models
        if m.needs is not None and m.budget is not None and m.needs > m.budget
    ]
    share = min(replica_shape(spec.options).bundles[0][0], 1)
    total = sum(m.takes for m in models if m.takes is not None)
    if len(models) > 1 and total > share * gpu_bytes:
        problems.append(
            f"{spec.name}: its models take {_gib(total)} GiB together, more than its GPU share "
            f"({share:g} x {_gib(gpu_bytes)} GiB)"
        )
    return problems


def describe_memory(models: list[ModelMemory]) -> str:
    """The table cell: what the replica holds on each GPU, and what its budget is."""
    if not models:
        return "-"
    takes = [m.takes for m in models if m.takes is not None]
    needs = [m.needs for m in models if m.needs is not None]
    if len(takes) < len(models) or len(needs) < len(models):
        return "?"
    taken, needed = _gib(sum(takes)), _gib(sum(needs))
    return taken if taken == needed else f"{taken} (needs {needed})"


def _vllm_memory(
    model: VLLMModelEntry, gpu_bytes: int | None, share_bytes: int | None
) -> ModelMemory:
    """``share_bytes``: the replica's share of one GPU, the budget when ``kv_cache_memory_bytes``
    (not ``gpu_memory_utilization``) sizes the KV cache."""
    kwargs = {**model.engine_kwargs, **model.engine_overrides()}
    source = os.path.expanduser(model.model_loading_config.model_source)
    config = read_model_config(source)
    dtype_bytes = _vllm_dtype_bytes(kwargs.get("dtype", "auto"), config)
    weights = _weight_bytes(source, config, dtype_bytes)
    if config is None or weights is None:
        return ModelMemory(model.model_id, None, None, None, detail="model files out of reach")
    text = text_config(config)
    tp, pp = kwargs.get("tensor_parallel_size") or 1, kwargs.get("pipeline_parallel_size") or 1
    large_gpu = (
        gpu_bytes is not None and gpu_bytes >= 70 * GIB
    )  # vLLM's own defaults follow the GPU
    max_seqs = kwargs.get("max_num_seqs") or (1024 if large_gpu else 256)
    batched = kwargs.get("max_num_batched_tokens") or (8192 if large_gpu else 2048)
    max_len = kwargs.get("max_model_len") or text.get("max_position_embeddings") or 2048
    kv_dtype = kwargs.get("kv_cache_dtype", "auto")
    per_token = kv_bytes_per_token(config, DTYPE_BYTES.get(kv_dtype, dtype_bytes), tp, pp) or 0
    activations = (
        batched
        * (4 * text.get("hidden_size", 0) + 2 * text.get("intermediate_size", 0))
        * dtype_bytes
    )
    activations += max_seqs * text.get("vocab_size", 0) * LOGIT_BYTES
    overhead = CUDA_CONTEXT_BYTES + (0 if kwargs.get("enforce_eager") else CUDA_GRAPH_BYTES)
    fixed = weights // (tp * pp) + activations + overhead
    needs = fixed + per_token * max_len
    detail = (
        f"weights {_gib(weights // (tp * pp))}, KV cache for one {max_len}-token sequence "
        f"{_gib(per_token * max_len)}, activations {_gib(activations)}, "
        f"CUDA graphs and context {_gib(overhead)}"
    )
    if kwargs.get("kv_cache_memory_bytes"):
        takes = fixed + kwargs["kv_cache_memory_bytes"]
        budget = share_bytes
        kv_room = kwargs["kv_cache_memory_bytes"]
    else:
        budget = int(kwargs.get("gpu_memory_utilization", 0.9) * gpu_bytes) if gpu_bytes else None
        takes = budget if budget is not None else needs
        kv_room = budget - fixed if budget is not None else None
    sequences = (
        max(0, kv_room // (per_token * max_len)) if kv_room is not None and per_token else None
    )
    return ModelMemory(
        model.model_id,
        needs,
        takes,
        budget,
        min(sequences, max_seqs) if sequences is not None else None,
        detail,
    )


def _transformers_memory(model: BaseModelEntry, budget: int | None) -> ModelMemory:
    source = os.path.expanduser(model.model_loading_config.model_source)
    config = read_model_config(source)
    dtype = getattr(model.engine_kwargs, "dtype", "auto")
    weights = _weight_bytes(source, config, DTYPE_BYTES.get(dtype, 2))  # auto: float16 on a GPU
    if weights is None:
        return ModelMemory(model.model_id, None, None, budget, detail="model files out of reach")
    needs = int(weights * (1 + TRANSFORMERS_ACTIVATION_FRACTION)) + CUDA_CONTEXT_BYTES
    activations = needs - weights - CUDA_CONTEXT_BYTES
    detail = f"weights {_gib(weights)}, activations {_gib(activations)}, CUDA context 0.5"
    return ModelMemory(model.model_id, needs, needs, budget, detail=detail)


def _weight_bytes(source: str, config: dict | None, dtype_bytes: int) -> int | None:
    """From the architecture at the serving dtype, else as stored (quantized checkpoints)."""
    parameters = (
        parameter_count(config) if config and not config.get("quantization_config") else None
    )
    return parameters * dtype_bytes if parameters else stored_weight_bytes(source)


def _vllm_dtype_bytes(dtype: str, config: dict | None) -> int:
    """vLLM's ``auto``: the checkpoint's dtype, with float32 checkpoints served in 16 bits on a
    GPU."""
    if dtype != "auto":
        return DTYPE_BYTES.get(dtype, 2)
    stored = (config or {}).get("torch_dtype") or (config or {}).get("dtype") or "bfloat16"
    return min(DTYPE_BYTES.get(stored, 2), 2)


def _gib(value: int) -> str:
    return f"{value / GIB:.1f}"


def gpu_bytes_for(gpu_type: str | None, gpu_memory_gib: float | None) -> int | None:
    if gpu_memory_gib:
        return int(gpu_memory_gib * GIB)
    return int(GPU_MEMORY_GIB[gpu_type] * GIB) if gpu_type else None


def cluster_gpu_type() -> str | None:
    """The GPU type of the running cluster's GPU nodes, from Ray's ``accelerator_type`` resource
    (None: no GPU, an unknown type, or mixed types: the memory check is then left out)."""
    import ray

    types = {
        key.split(":", 1)[1]
        for node in ray.nodes()
        if node["Alive"]
        for key in node["Resources"]
        if key.startswith("accelerator_type:")
    }
    known = {RAY_ACCELERATOR_TYPES.get(t) for t in types}
    return known.pop() if len(known) == 1 and None not in known else None
