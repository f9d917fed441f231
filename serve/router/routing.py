"""The router's view of the configured models: pure data, built once from the config."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from common.media_fetch import MediaFetchPolicy
from common.serve_options import replica_range
from common.upload_sizes import FORM_OVERHEAD_BYTES, largest_upload_body
from configs import LoadedConfig, load_platform_settings
from configs.api_keys import APIKey
from configs.deployment_capacity import deployment_limits
from configs.pipeline_models import PipelineConfig
from configs.server_models import BaseModelEntry, Capability, PlatformSettings

# The JSON endpoints vLLM's OpenAI server has, at its own paths (the Jina/Cohere-shaped rerank
# and the /v1 aliases it keeps): the router's /v1 and a model's one-hop URL serve the same set.
VLLM_ENDPOINTS = {
    "/v1/chat/completions": Capability.CHAT,
    "/v1/completions": Capability.COMPLETIONS,
    "/v1/embeddings": Capability.EMBEDDINGS,
    "/v1/rerank": Capability.RERANK,
    "/rerank": Capability.RERANK,
    "/v1/score": Capability.SCORE,
    "/score": Capability.SCORE,
    "/classify": Capability.CLASSIFY,
    "/tokenize": Capability.TOKENIZE,
    "/detokenize": Capability.DETOKENIZE,
}

MULTIPLEXED_HEADER = "serve_multiplexed_model_id"  # Ray Serve's header naming a multiplexed model


def requested_model(headers: Mapping[str, str], model: Any) -> Any:
    """``model``, or ``model:variant`` when Ray Serve's multiplexed-model header names a variant."""
    variant = headers.get(MULTIPLEXED_HEADER)
    if variant and isinstance(model, str) and model and ":" not in model:
        return f"{model}:{variant}"
    return model


@dataclass(frozen=True)
class ModelRoute:
    model_id: str
    model_type: str
    deployment_name: str
    capabilities: tuple[Capability, ...]
    max_context_tokens: int | None = None
    max_upload_bytes: int | None = None
    tensors: dict[str, list[dict[str, Any]]] | None = (
        None  # /v2 inputs and outputs, when served there
    )
    min_replicas: int = 1  # 0: scaled to zero when idle; a request waits while a replica starts
    variant: str | None = None  # a multiplexed variant of the model ``parent``
    parent: str | None = None
    app_name: str | None = None  # the model's own Serve application; None: the router's application
    # Requests its deployment takes in at once (running + queued; None: unbounded), as one router
    # process calls it and as one replica's own HTTP port takes them: past it, a 503 at once.
    router_capacity: int | None = None
    replica_capacity: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict[str, Any]:
        """The ``/v1/models`` entry: OpenAI's fields plus what the model can serve."""
        card = {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "rayserve-platform",
            "type": self.model_type,
            "capabilities": [c.value for c in self.capabilities],
        }
        if self.max_context_tokens:
            card["max_model_len"] = self.max_context_tokens
        if self.parent:
            card["parent"] = self.parent
        return card

    @property
    def engine_model_id(self) -> str:
        """The model whose engine answers: the base model of a variant."""
        return self.parent or self.model_id

    def variant_route(self, variant: str) -> ModelRoute:
        return dataclasses.replace(
            self, model_id=f"{self.model_id}:{variant}", variant=variant, parent=self.model_id
        )


async def deployment_states(
    engines: Any, routes: Iterable[ModelRoute], timeout_s: float = 2.0
) -> dict[str, dict | None]:
    """Stats of each deployment behind ``routes`` (None: no replica answered), probed once however
    many models or variants it serves. Deployments that scale to zero count as ready without a
    probe: asking them for stats would start (and keep alive) a replica no request needs."""
    behind = {route.deployment_name: route for route in routes}

    async def probe(route: ModelRoute) -> dict | None:
        if route.min_replicas == 0:
            return {"scales_from_zero": True}
        return await engines.status(route, timeout_s)

    states = await asyncio.gather(*(probe(route) for route in behind.values()))
    return dict(zip(behind, states, strict=True))


def model_state(model_id: str, deployment_state: dict | None) -> dict:
    """A model's own part of its deployment's stats. A group's replica reports each member under
    ``engines``: the member gets its own counters, the replica's placement, and the group's
    models."""
    if not deployment_state or "engines" not in deployment_state:
        return deployment_state or {}
    engines = deployment_state["engines"]
    shared = {key: value for key, value in deployment_state.items() if key != "engines"}
    return {**shared, **engines.get(model_id, {}), "group_models": sorted(engines)}


@dataclass(frozen=True)
class RouterSettings:
    """Everything the router replica needs, derived from the config at build time."""

    routes: dict[str, ModelRoute]
    api_keys: tuple[APIKey, ...] = ()
    cors: dict[str, Any] = field(default_factory=dict)
    max_request_bytes: int = 8 * 1024 * 1024
    request_timeout_s: float = 600
    media: MediaFetchPolicy = field(default_factory=MediaFetchPolicy)
    max_upload_memory_bytes: int = 1024 * 1024 * 1024
    platform_app: str | None = (
        None  # the router application (its key limits); None: this replica's own
    )
    pipelines: dict[str, PipelineConfig] = field(
        default_factory=dict
    )  # by id; their steps name routes
    router_replicas: int = 1  # which share each deployment's capacity
    built_api_keys: tuple[APIKey, ...] | None = None  # what the build read: api_keys at first
    # keys come as user_config (rendered applications): refuse every request until they do
    keys_pending: bool = False
    usage_database: str | None = None  # the ledger's SQLAlchemy URL; None: no ledger

    def __post_init__(self) -> None:
        if self.built_api_keys is None:
            object.__setattr__(self, "built_api_keys", self.api_keys)

    def with_user_config(self, user_config: dict[str, Any] | None) -> RouterSettings:
        """These settings with what may change on running replicas (a deployment's
        ``user_config``): the request timeout, the key entries (``key_sources``: read here, as
        the build reads them) and the keys ``deploy_app.py`` read (``APIKey.live``)."""
        changes = dict(user_config or {})
        settings = self
        sources = changes.pop("key_sources", None)
        if sources is not None:
            settings = dataclasses.replace(self, keys_pending=False)
        if sources is not None and changes.get("api_keys") is None:
            # no keys read where the config was applied: this replica reads the entries' keys
            platform = load_platform_settings(sources)
            built = tuple(platform.keys_as_replicas_hold_them())
            settings = dataclasses.replace(settings, api_keys=built, built_api_keys=built)
        if "api_keys" in changes:  # None: the deploy could not read them; the sources' apply
            live = changes["api_keys"]
            changes["api_keys"] = (
                settings.built_api_keys
                if live is None
                else tuple(APIKey.from_live(key) for key in live)
            )
        return dataclasses.replace(settings, **changes)

    @property
    def max_upload_request_bytes(self) -> int:
        """The body limit for multipart uploads: the largest file any model takes, plus the form."""
        largest = max((r.max_upload_bytes or 0 for r in self.routes.values()), default=0)
        return max(largest + FORM_OVERHEAD_BYTES, self.max_request_bytes)

    def tensor_request_bytes(self, route: ModelRoute) -> int:
        """The body limit of a ``/v2`` request to ``route``: one of its largest inputs as base64
        JSON (or several smaller ones), known from the path before the body is read."""
        return max(self.max_request_bytes, largest_upload_body(route.max_upload_bytes or 0))

    @classmethod
    def from_config(cls, config: LoadedConfig) -> RouterSettings:
        return dataclasses.replace(
            cls.from_settings(config.platform, config_routes(config)),
            platform_app=config.platform.platform_app,
        )

    @classmethod
    def from_settings(
        cls, platform: PlatformSettings, routes: dict[str, ModelRoute]
    ) -> RouterSettings:
        return cls(
            routes=routes,
            api_keys=tuple(platform.resolved_api_keys()),
            cors=platform.cors.model_dump() if platform.cors.allow_origins else {},
            max_request_bytes=platform.router.max_request_bytes,
            request_timeout_s=platform.router.request_timeout_s,
            max_upload_memory_bytes=platform.router.max_upload_memory_bytes,
            pipelines={pipeline.model_id: pipeline for pipeline in platform.pipelines},
            router_replicas=platform.router.num_replicas,
            keys_pending=platform.keys_in_user_config,
            usage_database=platform.usage.database,
            media=MediaFetchPolicy(
                allowed_domains=tuple(platform.media.allowed_domains),
                allowed_networks=tuple(str(n) for n in platform.media.allowed_networks),
                max_bytes=platform.media.max_download_bytes,
                timeout_s=platform.media.download_timeout_s,
                max_urls_per_request=platform.media.max_urls_per_request,
                max_parts_per_request=platform.media.max_media_parts_per_request,
                max_image_pixels=platform.media.max_image_pixels,
                max_frame_pixels=platform.media.max_frame_pixels,
                max_video_frames=platform.media.max_video_frames,
                max_video_check_s=platform.media.max_video_check_s,
                max_request_bytes=platform.media.max_request_download_bytes,
            ),
        )


def config_routes(
    config: LoadedConfig, app_name: str | None = None, routers: int | None = None
) -> dict[str, ModelRoute]:
    """The routes of ``config``'s models with their deployments' capacities (``routers``: how many
    router replicas share a deployment's running slots; the config's own router by default)."""
    routers = routers or config.platform.router.num_replicas
    router_limits = deployment_limits(config, "router", routers)
    replica_limits = deployment_limits(config, "replica")
    return {
        name: dataclasses.replace(
            route,
            router_capacity=router_limits.get(route.deployment_name),
            replica_capacity=replica_limits.get(route.deployment_name),
        )
        for name, route in model_routes(config.models, app_name).items()
    }


def model_routes(
    models: Iterable[BaseModelEntry], app_name: str | None = None
) -> dict[str, ModelRoute]:
    """The route of every model, and of each of its variants (``<model_id>:<variant>``), served
    by the application ``app_name`` (None: the router's own)."""
    models = list(models)
    bases = {
        m.model_id: ModelRoute(
            model_id=m.model_id,
            model_type=m.model_loading_config.type.value,
            deployment_name=m.deployment_name,
            capabilities=tuple(m.capabilities()),
            max_context_tokens=m.max_context_tokens(),
            max_upload_bytes=m.max_upload_bytes(),
            tensors=m.tensor_metadata(),
            min_replicas=replica_range(m.serve_options())[0],
            app_name=app_name,
        )
        for m in models
    }
    routes = dict(bases)
    for m in models:
        routes.update(
            {f"{m.model_id}:{name}": bases[m.model_id].variant_route(name) for name in m.variants()}
        )
    return routes
