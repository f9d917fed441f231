"""The ``import_path``s of the platform's Serve applications.

- ``build_model_app``: one model (or co-located group) as its own application, as
  ``builders/render.py`` renders ``model_config.yaml`` (what ``deploy_app.py`` deploys).
- ``build_router``: ``MultiModelRouter``, which finds the model applications through Serve.
- ``build_app``: the whole file as one application (router and every engine), what a plain
  ``serve run model_config.yaml`` gets: the same API, but any edit restarts every model and
  there is no one-hop path.

Each validates its ``args`` first (nothing is deployed when any field is wrong).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from cloud.storage import resolve_model_source
from common.rendered_apps import ROUTER_DEPLOYMENT, VARIANT_ROUTER_DEPLOYMENT
from common.serve_env import with_replica_env
from configs import (
    DeploymentSpec,
    ModelType,
    load_platform_config,
    load_platform_settings,
    require_secrets,
)
from configs.server_models import CLOUD_SCHEMES, BaseModelEntry, PlatformSettings
from configs.vllm_models import VLLMModelEntry
from serve.deployments.engine_deployment import EngineDeployment
from serve.deployments.prefix_affinity import request_router_config
from serve.deployments.variant_router import VariantRouter
from serve.deployments.vllm_ingress import VLLMIngressDeployment
from serve.policy.capacity import RETRY_AFTER_S
from serve.router.router import MultiModelRouter
from serve.router.routing import RouterSettings


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` and return the bound application (router + engines)."""
    config = load_platform_config(args)
    require_secrets(config.platform)
    engines = {spec.name: _bind_engines(spec) for spec in config.deployments()}
    return _bind_router(config.platform, RouterSettings.from_config(config), engines)


def build_router(args: dict[str, Any]) -> Application:
    """The router alone; its routes come from the model applications Serve runs."""
    settings = load_platform_settings(args)
    require_secrets(settings)
    return _bind_router(settings, RouterSettings.from_settings(settings, routes={}), None)


def build_model_app(args: dict[str, Any]) -> Application:
    """One model's (or one group's) engine deployment, the application's ingress."""
    config = load_platform_config(args)
    require_secrets(config.platform)
    (spec,) = config.deployments()
    return _bind_engines(spec, RouterSettings.from_config(config))


def _bind_router(
    platform: PlatformSettings, settings: RouterSettings, engines: dict | None
) -> Application:
    router = platform.router
    router_deployment = serve.deployment(MultiModelRouter).options(
        name=ROUTER_DEPLOYMENT,
        num_replicas=router.num_replicas,
        max_ongoing_requests=router.max_ongoing_requests,
        ray_actor_options=with_replica_env(router.ray_actor_options.model_dump(exclude_none=True)),
        max_replicas_per_node=router.max_replicas_per_node,  # None: Serve's default, no limit
    )
    return router_deployment.bind(settings, engines)


def _bind_engines(spec: DeploymentSpec, one_hop: RouterSettings | None = None) -> Application:
    """The engine deployment; a lone vLLM model with ``one_hop`` settings also serves vLLM's own
    HTTP app on its replicas, guarded by those settings."""
    options = {**spec.options, "name": spec.name}
    # A one-hop request past the queue is refused by Serve on the replica, before the platform's
    # code: with Retry-After, as the router's 503 has it.
    options.setdefault("backpressure_config", {"retry_after_s": RETRY_AFTER_S})
    options["ray_actor_options"] = with_replica_env(options.get("ray_actor_options", {}))
    router_config = _request_router_config(spec)
    if router_config is not None:
        options["request_router_config"] = router_config
    entries = [_replica_entry(m) for m in spec.models]
    if (
        one_hop is not None
        and len(spec.models) == 1
        and spec.models[0].model_loading_config.type is ModelType.VLLM
    ):
        engine = serve.deployment(VLLMIngressDeployment).options(**options).bind(entries, one_hop)
        # Under HAProxy Serve refuses a custom request router on an ingress deployment unless
        # HAProxy asks an ingress request router, which then picks through it.
        asks_a_router = spec.models[0].variants() or router_config is not None
        return (
            _with_variant_router(engine, spec.models[0]) if asks_a_router and _haproxy() else engine
        )
    return serve.deployment(EngineDeployment).options(**options).bind(entries)


def _request_router_config(spec: DeploymentSpec) -> RequestRouterConfig | None:
    """How Serve's handles pick the deployment's replica, where its model's ``routing`` says (a
    vLLM model, which is never in a group)."""
    (model, *others) = spec.models
    if others or not isinstance(model, VLLMModelEntry):
        return None
    return request_router_config(model.routing)


def _with_variant_router(engine: Application, model: BaseModelEntry) -> Application:
    """``engine`` with HAProxy asking a ``VariantRouter`` which replica gets each request, so a
    variant's requests on the one-hop URL go to the replica holding it, and a model routed by
    prefix gets its request router's pick (``prefix_affinity.py``), as on ``/v1``. One replica of
    no CPU: it answers one small request per request, and Serve restarts it where it fails. Ray's
    hook for this is private (``ray.serve.llm``'s direct streaming is its other user)."""
    router = serve.deployment(VariantRouter).options(
        name=VARIANT_ROUTER_DEPLOYMENT,
        num_replicas=1,
        ray_actor_options=with_replica_env({"num_cpus": 0}),
    )
    return engine._with_ingress_request_router(
        router.bind(engine, model.model_id, sorted(model.variants()))
    )


def _haproxy() -> bool:
    """Whether Serve runs Ray's HAProxy ingress here (where the application is built, which is
    the cluster's setting); without it a VariantRouter has no HAProxy to ask it, and Serve
    refuses one."""
    from ray.serve._private import constants

    return constants.RAY_SERVE_ENABLE_HA_PROXY


def _replica_entry(model: BaseModelEntry) -> dict[str, Any]:
    """The model entry as the replica validates it again, with every local path pinned."""
    entry = model.model_dump(mode="json", exclude_unset=True)
    # Replicas may start in another working directory: pin relative paths now.
    entry["model_loading_config"]["model_source"] = _pinned(model.model_loading_config.model_source)
    if model.multiplex_config:
        # The replica gets every variant by name with pinned paths (variants_dir was listed at
        # validation).
        entry["multiplex_config"] = {
            "variants": {name: _pinned(source) for name, source in model.variants().items()},
            "max_variants_per_replica": model.multiplex_config.max_variants_per_replica,
        }
    return entry


def _pinned(source: str) -> str:
    """Local paths made absolute; hub ids and cloud URIs (fetched by the replica) unchanged."""
    return source if source.startswith(CLOUD_SCHEMES) else resolve_model_source(source)
