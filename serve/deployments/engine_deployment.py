"""The Ray Serve deployment that owns the engines of one model, or of a group of models."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve

from cloud.download_progress import progress_key
from cloud.storage import download_watch
from common.devices import replica_placement
from common.engine_response import EngineResponse
from common.request_ids import current_request_id
from configs import MODEL_ENTRY_TYPES, ModelType
from configs.server_models import BaseModelEntry, Capability
from servers import engine_class
from servers.base_engine import BaseEngine

logger = logging.getLogger("ray.serve")


class EngineDeployment:
    """Loads one engine per model entry and forwards the router's calls to the one asked for.

    Usually one entry; a group (``groups:`` in the YAML) puts several small models in every
    replica, sharing its CPUs and GPU share. Options (replicas, CPUs, GPU share, queue
    bounds) are applied by the builder with ``serve.deployment(EngineDeployment).options(...)``.
    """

    # Serve awaits an async constructor; mypy holds __init__ to returning None
    async def __init__(self, entries: list[dict[str, Any]]):  # type: ignore[misc]
        self.engines: dict[str, BaseEngine] = {}
        self.requests_total: Counter[str] = Counter()  # by model, for the console's request rates
        for raw in entries:
            entry = _validated(raw)
            self.engines[entry.model_id] = engine_class(entry)(entry)
            # while the weights arrive, `deploy_app.py status` and /ready show how far they got
            with download_watch(
                entry.model_loading_config.model_source, progress_key(_app_name(), entry.model_id)
            ):
                await self.engines[entry.model_id].start()
        self.variants = {
            model_id: Variants(engine)
            for model_id, engine in self.engines.items()
            if engine.entry.multiplex_config
        }

    async def _engine_for(self, model_id: str) -> BaseEngine:
        """The engine of ``model_id``, or of the variant the request was routed for."""
        variant = serve.get_multiplexed_model_id()
        if variant and model_id in self.variants:
            return await self.variants[model_id].engine(variant)
        return self.engines[model_id]

    async def handle(
        self, model_id: str, capability: str, body: dict[str, Any], request_id: str | None = None
    ) -> EngineResponse:
        _adopt_request_id(request_id, model_id, capability)
        self.requests_total[model_id] += 1
        engine = await self._engine_for(model_id)
        return await engine.handle(Capability(capability), body)

    async def handle_stream(
        self, model_id: str, capability: str, body: dict[str, Any], request_id: str | None = None
    ) -> AsyncGenerator[str | EngineResponse, None]:
        _adopt_request_id(request_id, model_id, capability)
        self.requests_total[model_id] += 1
        engine = await self._engine_for(model_id)
        stream = engine.handle_stream(Capability(capability), body)
        try:
            async for item in stream:
                yield item
        finally:
            # Serve cancels *this* generator when the client leaves; close the engine's now,
            # not whenever it is garbage-collected, so its request is aborted at once.
            await stream.aclose()

    async def stats(self) -> dict[str, Any]:
        """One engine's counters at the top level; a group's under ``engines`` by model."""
        per_model = {model_id: self._engine_stats(model_id) for model_id in self.engines}
        stats = next(iter(per_model.values())) if len(per_model) == 1 else {"engines": per_model}
        return {**stats, "placement": replica_placement()}

    async def record_routing_stats(self) -> dict[str, Any]:
        """``stats`` as Serve's controller pulls them and the router's /ready probe asks one
        replica's actor: a call outside the request queue, answered while the replica is full."""
        return await self.stats()

    def _engine_stats(self, model_id: str) -> dict[str, Any]:
        stats = {**self.engines[model_id].stats(), "requests_total": self.requests_total[model_id]}
        if model_id in self.variants:
            stats["variants_loaded"] = list(self.variants[model_id].loaded)
        return stats

    async def check_health(self) -> None:
        for engine in self.engines.values():
            await engine.check_health()

    async def __del__(self) -> None:
        for engine in self.engines.values():
            await engine.shutdown()


def _app_name() -> str:
    return serve.get_replica_context().app_name


def _validated(raw: dict[str, Any]) -> BaseModelEntry:
    model_type = ModelType(raw["model_loading_config"]["type"].lower())
    return MODEL_ENTRY_TYPES[model_type].model_validate(raw)


class Variants:
    """A model's multiplexed variants on this replica, through Serve's ``serve.multiplexed``: an
    LRU of at most ``max_variants_per_replica``, and routing that prefers replicas holding the
    variant a request names."""

    def __init__(self, base: BaseEngine):
        self.base = base
        self.loaded: list[str] = []

        async def load(name: str) -> LoadedVariant:  # a plain function: Serve keeps its LRU on it
            engine = await base.load_variant(name)
            self.loaded.append(name)
            return LoadedVariant(name, engine, self)

        config = base.entry.multiplex_config
        assert config is not None, "only a model with variants has a Variants"
        limit = config.max_variants_per_replica
        self._load = serve.multiplexed(max_num_models_per_replica=limit)(load)

    async def engine(self, name: str) -> BaseEngine:
        return (await self._load(name)).engine


class LoadedVariant:
    """What ``serve.multiplexed`` caches per variant; Serve awaits ``__del__`` when it evicts
    one."""

    def __init__(self, name: str, engine: BaseEngine, owner: Variants):
        self.name, self.engine, self.owner = name, engine, owner

    async def __del__(self) -> None:
        self.owner.loaded.remove(self.name)
        if self.engine is not self.owner.base:  # a variant with its own weights: free them
            await self.engine.shutdown()


def _adopt_request_id(request_id: str | None, model_id: str, capability: str) -> None:
    """The router's request id becomes this call's (the vLLM engine reads it from there), logged."""
    current_request_id.set(request_id)
    logger.info("%s %s request_id=%s", model_id, capability, request_id)
