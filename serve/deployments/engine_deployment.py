"""The Ray Serve deployment that owns one engine; one deployment per configured model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

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

    async def handle(self, capability: str, body: dict[str, Any]) -> EngineResponse:
        return await self.engine.handle(Capability(capability), body)

    async def handle_stream(self, capability: str, body: dict[str, Any]) -> AsyncIterator[str | EngineResponse]:
        stream = self.engine.handle_stream(Capability(capability), body)
        try:
            async for item in stream:
                yield item
        finally:
            # Serve cancels *this* generator when the client leaves; close the engine's now,
            # not whenever it is garbage-collected, so its request is aborted at once.
            await stream.aclose()

    async def stats(self) -> dict[str, Any]:
        return {**self.engine.stats(), "placement": replica_placement()}

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self) -> None:
        await self.engine.shutdown()
