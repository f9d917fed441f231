"""Config of ``type: vllm`` models: ``engine_kwargs`` are checked against vLLM's own
``AsyncEngineArgs``, so a misspelt key or a wrong type fails before anything is deployed."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model, field_validator, model_validator

from configs.server_models import BaseModelEntry, Capability

# Set by the platform from model_loading_config; a YAML value would be silently overridden.
PLATFORM_OWNED_ARGS = {"model": "model_source", "served_model_name": "model_id"}

# A generous queue by default: Serve's default of 5 ongoing requests per replica starves
# vLLM's continuous batching (requests wait in Serve instead of batching in vLLM).
DEFAULT_MAX_ONGOING_REQUESTS = 256


@functools.cache
def vllm_engine_kwargs_model() -> type[BaseModel]:
    """A strict pydantic model with one optional field per ``AsyncEngineArgs`` field."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields: dict[str, Any] = {}
    for field in dataclasses.fields(AsyncEngineArgs):
        if field.name in PLATFORM_OWNED_ARGS or field.name.startswith("_"):
            continue
        annotation = field.type
        try:
            if isinstance(annotation, str):
                raise TypeError("unresolved annotation")
            TypeAdapter(annotation)
        except Exception:  # types pydantic cannot check (torch.dtype, ...): vLLM checks them
            annotation = Any
        fields[field.name] = (annotation, None)
    return create_model(
        "VLLMEngineKwargs",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


class VLLMModelEntry(BaseModelEntry):
    engine_kwargs: dict[str, Any] = {}

    default_serve_options: ClassVar[dict[str, Any]] = {
        **BaseModelEntry.default_serve_options,
        "max_ongoing_requests": DEFAULT_MAX_ONGOING_REQUESTS,
    }

    @field_validator("engine_kwargs", mode="before")
    @classmethod
    def _platform_owned_args(cls, value: Any) -> Any:
        for key, owner in PLATFORM_OWNED_ARGS.items():
            if isinstance(value, dict) and key in value:
                raise ValueError(
                    f"'{key}' is set from model_loading_config.{owner}; remove it from engine_kwargs"
                )
        return value

    @model_validator(mode="after")
    def _fits_its_gpus(self) -> "VLLMModelEntry":
        """vLLM sizes its memory as a fraction of the whole GPU: on a share it must stay inside it."""
        share = self.deployment_config.ray_actor_options.num_gpus
        utilization = self.engine_kwargs.get("gpu_memory_utilization")
        if share is not None and 0 < share < 1 and utilization is not None and utilization > share:
            raise ValueError(
                f"engine_kwargs.gpu_memory_utilization ({utilization}) is above the replica's GPU share "
                f"(deployment_config.ray_actor_options.num_gpus: {share}): vLLM would take memory the other "
                f"models on that GPU hold; set gpu_memory_utilization to at most {share} (e.g. {round(share * 0.9, 2)})")
        parallel = self._gpus_for_parallelism()
        if share is not None and parallel > 1 and share != parallel:
            raise ValueError(
                f"tensor_parallel_size x pipeline_parallel_size needs {parallel} GPUs, but "
                f"deployment_config.ray_actor_options.num_gpus is {share}; set num_gpus: {parallel} or leave it out")
        return self

    def _gpus_for_parallelism(self) -> int:
        tp = self.engine_kwargs.get("tensor_parallel_size") or 1  # 0: every GPU the replica has
        return tp * (self.engine_kwargs.get("pipeline_parallel_size") or 1)

    @classmethod
    def engine_kwargs_model(cls) -> type[BaseModel]:
        return vllm_engine_kwargs_model()

    def capabilities(self) -> list[Capability]:
        if self.engine_kwargs.get("runner") == "pooling" or self.engine_kwargs.get("convert") == "embed":
            return [Capability.EMBEDDINGS]
        return [Capability.CHAT, Capability.COMPLETIONS]

    def max_context_tokens(self) -> int | None:
        return self.engine_kwargs.get("max_model_len")

    def serve_options(self) -> dict[str, Any]:
        options = super().serve_options()
        if self.deployment_config.max_ongoing_requests is None and "max_num_seqs" in self.engine_kwargs:
            options["max_ongoing_requests"] = max(self.engine_kwargs["max_num_seqs"], 1)
        actor = options["ray_actor_options"]
        if "num_gpus" not in actor and self._gpus_for_parallelism() > 1:
            actor["num_gpus"] = self._gpus_for_parallelism()  # the replica holds every GPU its shards use
        return options

    def engine_overrides(self) -> dict[str, Any]:
        """Engine arguments the platform derives when the YAML leaves them out."""
        share = self.deployment_config.ray_actor_options.num_gpus
        if share is not None and 0 < share < 1 and "gpu_memory_utilization" not in self.engine_kwargs:
            # vLLM's default (0.9 of the whole GPU) would not fit a share; keep 10% headroom inside it.
            return {"gpu_memory_utilization": round(share * 0.9, 4)}
        return {}
