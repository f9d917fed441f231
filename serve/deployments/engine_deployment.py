"""The Ray Serve deployment that owns one engine; one deployment per configured model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from common.devices import replica_placement
from configs import MODEL_ENTRY_TYPES, ModelType
from configs.server_models import Capability
from servers import engine_class
from servers.base_engine import EngineResponse

logger = logging.getLogger("ray.serve")


class EngineDeployment:
    """Loads the engine for one model entry and forwards the router's calls to it.

    Options (replicas, CPUs, GPU share, queue bounds) are applied by the builder with
    ``serve.deployment(EngineDeployment).options(...)`` from the model's
    ``deployment_config``.
    """

    async def __init__(self, entry: dict[str, Any]):
        model_type = ModelType(entry["model_loading_config"]["type"].lower())
        self.entry = MODEL_ENTRY_TYPES[model_type].model_validate(entry)
        self.engine = engine_class(model_type)(self.entry)
        await self.engine.start()
        self.variants_loaded: list[str] = []
        if self.entry.multiplex_config:
            # Serve's multiplexing: an LRU of variants per replica, and routing that prefers
            # replicas which already hold the variant a request names.
            limit = self.entry.multiplex_config.max_variants_per_replica
            async def load(name: str) -> LoadedVariant:  # a plain function: Serve caches its LRU on it
                return await self._load_variant(name)

            self._variant = serve.multiplexed(max_num_models_per_replica=limit)(load)

    async def _load_variant(self, name: str) -> "LoadedVariant":
        engine = await self.engine.load_variant(name)
        self.variants_loaded.append(name)
        return LoadedVariant(name, engine, self)

    async def _engine_for_request(self):
        """The engine of the variant the request was routed for (``multiplexed_model_id``), or the base."""
        name = serve.get_multiplexed_model_id()
        return (await self._variant(name)).engine if name and self.entry.multiplex_config else self.engine

    async def handle(self, capability: str, body: dict[str, Any]) -> EngineResponse:
        engine = await self._engine_for_request()
        return await engine.handle(Capability(capability), body)

    async def handle_stream(self, capability: str, body: dict[str, Any]) -> AsyncIterator[str | EngineResponse]:
        engine = await self._engine_for_request()
        stream = engine.handle_stream(Capability(capability), body)
        try:
            async for item in stream:
                yield item
        finally:
            # Serve cancels *this* generator when the client leaves; close the engine's now,
            # not whenever it is garbage-collected, so its request is aborted at once.
            await stream.aclose()

    async def stats(self) -> dict[str, Any]:
        stats = {**self.engine.stats(), "placement": replica_placement()}
        if self.entry.multiplex_config:
            stats["variants_loaded"] = list(self.variants_loaded)
        return stats

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self) -> None:
        await self.engine.shutdown()


class LoadedVariant:
    """What ``serve.multiplexed`` caches per variant; Serve awaits ``__del__`` when it evicts one."""

    def __init__(self, name: str, engine, owner: EngineDeployment):
        self.name, self.engine, self.owner = name, engine, owner

    async def __del__(self) -> None:
        self.owner.variants_loaded.remove(self.name)
        if self.engine is not self.owner.engine:  # a variant with its own weights: free them
            await self.engine.shutdown()
