"""The engine contract: what every model type implements, and nothing about HTTP or Ray.

An engine loads one model on the device Ray assigned to its replica and answers the
operations (``Capability``) its model serves. Non-streaming calls return an
``EngineResponse``; streaming calls yield text chunks (SSE lines), or a single
``EngineResponse`` first when the request fails before any output. The router only
forwards these, so one convention serves every endpoint and engine.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from common.engine_response import EngineResponse
from configs.server_models import BaseModelEntry, Capability


class BaseEngine(abc.ABC):
    """One model of one type, loaded on the replica's device."""

    def __init__(self, entry: BaseModelEntry):
        self.entry = entry

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights on the assigned device; the replica takes traffic once this returns."""

    async def check_health(self) -> None:
        """Raise if the engine cannot serve; Ray Serve restarts the replica then. An optional hook:
        by default an engine that started is healthy."""
        return None

    @abc.abstractmethod
    async def handle(self, capability: Capability, body: dict[str, Any]) -> EngineResponse:
        """Answer one non-streaming request."""

    async def handle_stream(
        self, capability: Capability, body: dict[str, Any]
    ) -> AsyncGenerator[str | EngineResponse, None]:
        """Answer one streaming request; engines that cannot stream answer whole."""
        yield await self.handle(capability, body)

    async def handle_many(
        self, capability: Capability, bodies: list[dict[str, Any]]
    ) -> list[EngineResponse]:
        """Answer many requests at once (batch jobs); engines that batch themselves run them
        together."""
        return list(await asyncio.gather(*(self.handle(capability, body) for body in bodies)))

    async def load_variant(self, name: str) -> BaseEngine:
        """The engine for multiplexed variant ``name``: by default this engine's type on the
        variant's weights. Ray Serve's ``serve.multiplexed`` calls it and evicts the least
        recently used variant (``shutdown``) beyond ``max_variants_per_replica``."""
        entry = self.entry.model_copy(deep=True)
        entry.model_loading_config.model_source = self.entry.variants()[name]
        entry.multiplex_config = None
        engine = type(self)(entry)
        await engine.start()
        return engine

    def stats(self) -> dict[str, Any]:
        """Counters for health pages and tests (requests in flight, ...)."""
        return {}

    async def shutdown(self) -> None:
        """Release the model and its device memory. An optional hook: by default there is nothing
        to release beyond what garbage collection frees."""
        return None
