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

from typing import Any

from ray import serve

from serve.deployments.engine_deployment import EngineDeployment
from serve.policy.key_limits import KeyLimits
from serve.policy.request_policy import PolicyMount, RequestPolicy, guarded
from serve.router.routing import VLLM_ENDPOINTS, RouterSettings
from serve.router.uploads import UploadMemory
from servers.vllm_engine import VLLMEngine

# (method, path under the route prefix) the one-hop path serves; vLLM answers its own 404 for
# an endpoint the model lacks (embeddings on a chat model, ...). vLLM's app has more: admin and
# scaling routes no client may reach.
ONE_HOP_ENDPOINTS = frozenset(
    {("POST", path) for path in VLLM_ENDPOINTS} | {("GET", "/v1/models"), ("GET", "/health")}
)


@serve.ingress()
class VLLMIngressDeployment(EngineDeployment):
    # Serve awaits an async constructor; mypy holds __init__ to returning None
    async def __init__(  # type: ignore[misc]
        self, entries: list[dict[str, Any]], settings: RouterSettings
    ):
        await super().__init__(entries)
        self.settings = settings
        self.policy: RequestPolicy | None = None

    def __serve_build_asgi_app__(self):
        """vLLM's own OpenAI app behind the platform's request policy (``serve/policy``), the
        one the router's app mounts too."""
        (engine,) = self.engines.values()
        assert isinstance(engine, VLLMEngine)  # the builder gives this deployment one vLLM model
        mount = PolicyMount(
            metrics_path="direct",
            model_endpoints=frozenset(VLLM_ENDPOINTS),
            model_id=engine.entry.model_id,
            endpoints=ONE_HOP_ENDPOINTS,
            on_model=self._note_variant,
            model_list="/v1/models",
        )
        self.policy = RequestPolicy(
            engine.http_app,
            self.settings,
            mount,
            KeyLimits(self.settings.platform_app or ""),  # the rendered app names its platform
            UploadMemory(self.settings.max_upload_memory_bytes),
        )
        return guarded(self.policy, self.requests_total)

    async def _note_variant(self, model: Any) -> None:
        """A body's ``model`` naming one of the variants (its route, as the router reads it):
        loaded through Serve's multiplexing."""
        route = self.settings.routes.get(model) if isinstance(model, str) else None
        if route is not None and route.variant is not None and route.parent in self.variants:
            await self.variants[route.parent].engine(route.variant)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The router settings that may change without a restart (``router.request_timeout_s``,
        the API keys) arrive as the deployment's ``user_config``, which is not part of the
        application's args: Serve applies an edit of it to the running replicas."""
        self.settings = self.settings.with_user_config(user_config)
        if self.policy is not None:
            self.policy.settings = self.settings
