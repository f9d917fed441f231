"""A vLLM model's engine deployment that is also its application's HTTP ingress (the one-hop path).

With Ray's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``), HAProxy forwards
``/models/<model_id>/...`` straight to a replica's own HTTP port, where vLLM's OpenAI app
(the one ``vllm serve`` builds, on the same engine) writes the tokens to the socket: no Ray
object per token, no router in between. The router's handle calls (``handle``,
``handle_stream``, ``stats``) still work on the same replicas, for the shared ``/v1``.

A request for one of the model's LoRA variants marks it loaded here in Serve's multiplexing,
as a call through the shared ``/v1`` does: both Serve's routing on ``/v1`` and the one-hop
path's ``VariantRouter`` then send that variant's requests to this replica first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray import serve

from serve.deployments.engine_deployment import EngineDeployment
from serve.deployments.one_hop_guard import OneHopGuard, observed_one_hop, with_cors
from serve.router.routing import RouterSettings
from servers.vllm_engine import VLLMEngine


@serve.ingress()
class VLLMIngressDeployment(EngineDeployment):
    # Serve awaits an async constructor; mypy holds __init__ to returning None
    async def __init__(  # type: ignore[misc]
        self, entries: list[dict[str, Any]], settings: RouterSettings
    ):
        await super().__init__(entries)
        self.settings = settings
        self.guard: OneHopGuard | None = None

    def __serve_build_asgi_app__(self):
        (engine,) = self.engines.values()
        assert isinstance(engine, VLLMEngine)  # the builder gives this deployment one vLLM model
        self.guard = OneHopGuard(engine.http_app, self.settings, self._note_variant)
        return observed_one_hop(with_cors(self.guard), engine.entry.model_id, self.requests_total)

    async def _note_variant(self, model: Any) -> None:
        """A body's ``model`` naming one of the variants (its route, as the router reads it):
        loaded through Serve's multiplexing."""
        route = self.settings.routes.get(model) if isinstance(model, str) else None
        if route is not None and route.variant is not None and route.parent in self.variants:
            await self.variants[route.parent].engine(route.variant)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The router settings that may change without a restart (``router.request_timeout_s``)
        arrive as the deployment's ``user_config``, which is not part of the application's args:
        Serve applies an edit of it to the running replicas."""
        self.settings = dataclasses.replace(self.settings, **user_config)
        if self.guard is not None:
            self.guard.settings = self.settings
