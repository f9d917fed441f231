"""A vLLM model's engine deployment that is also its application's HTTP ingress (the one-hop path).

With Ray's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``), HAProxy forwards
``/models/<model_id>/...`` straight to a replica's own HTTP port, where vLLM's OpenAI app
(the one ``vllm serve`` builds, on the same engine) writes the tokens to the socket: no Ray
object per token, no router in between. The router's handle calls (``handle``,
``handle_stream``, ``stats``) still work on the same replicas, for the shared ``/v1``.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from serve.deployments.engine_deployment import EngineDeployment
from serve.deployments.one_hop_guard import guarded
from serve.router.routing import RouterSettings


@serve.ingress()
class VLLMIngressDeployment(EngineDeployment):
    async def __init__(self, entries: list[dict[str, Any]], settings: RouterSettings):
        await super().__init__(entries)
        self.settings = settings

    def __serve_build_asgi_app__(self):
        (engine,) = self.engines.values()
        return guarded(engine.http_app, self.settings)
