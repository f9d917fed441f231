"""``build_app``: the ``import_path`` of the application in ``model_config.yaml``.

Ray Serve calls it with the YAML's ``args:`` block. It validates the whole block first
(nothing is deployed when any field is wrong), then creates one engine deployment per
model from its ``deployment_config`` and binds the router to their handles.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from cloud.storage import resolve_model_source
from common.serve_env import with_replica_env
from configs import DeploymentSpec, LoadedConfig, load_platform_config
from configs.server_models import CLOUD_SCHEMES, BaseModelEntry
from serve.deployments.engine_deployment import EngineDeployment
from serve.router.router import MultiModelRouter
from serve.router.routing import RouterSettings


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` and return the bound application (router + engines)."""
    return bind_application(load_platform_config(args))


def bind_application(config: LoadedConfig) -> Application:
    engines = {spec.name: _bind_engines(spec) for spec in config.deployments()}
    router = config.platform.router
    router_deployment = serve.deployment(MultiModelRouter).options(
        name="MultiModelRouter",
        num_replicas=router.num_replicas,
        max_ongoing_requests=router.max_ongoing_requests,
        ray_actor_options=with_replica_env(router.ray_actor_options.model_dump(exclude_none=True)),
    )
    return router_deployment.bind(RouterSettings.from_config(config), engines)


def _bind_engines(spec: DeploymentSpec) -> Application:
    options = {**spec.options, "name": spec.name}
    options["ray_actor_options"] = with_replica_env(options.get("ray_actor_options", {}))
    return serve.deployment(EngineDeployment).options(**options).bind([_replica_entry(m) for m in spec.models])


def _replica_entry(model: BaseModelEntry) -> dict[str, Any]:
    """The model entry as the replica validates it again, with every local path pinned."""
    entry = model.model_dump(mode="json", exclude_unset=True)
    # Replicas may start in another working directory: pin relative paths now.
    entry["model_loading_config"]["model_source"] = _pinned(model.model_loading_config.model_source)
    if model.multiplex_config:
        # The replica gets every variant by name with pinned paths (variants_dir was listed at validation).
        entry["multiplex_config"] = {
            "variants": {name: _pinned(source) for name, source in model.variants().items()},
            "max_variants_per_replica": model.multiplex_config.max_variants_per_replica,
        }
    return entry


def _pinned(source: str) -> str:
    """Local paths made absolute; hub ids and cloud URIs (fetched by the replica) unchanged."""
    return source if source.startswith(CLOUD_SCHEMES) else resolve_model_source(source)
