"""Render ``model_config.yaml`` as the Serve config that runs it: one application per model.

The file lists every model in one platform application's ``args`` (the shape of Ray Serve
LLM's ``llm_configs``). Serve versions each application by its ``import_path``,
``runtime_env`` and ``args``, so running the file as one application would rebuild every
model whenever any of them changed. Rendered, each model (or co-located group) is an
application of its own, and the platform application keeps only the router:

- ``<platform app>`` at its ``route_prefix``: ``MultiModelRouter`` (``/v1``, ``/v2``, keys,
  limits); it finds its models by reading the model applications' configs from Serve.
- ``<platform app>.<deployment name>`` per model or group: the engine deployment (named after
  its platform application, so two platforms, or a platform and a model, never share a name).
  A vLLM model's replica is its own HTTP ingress at ``<route_prefix>/models/<model_id>``, so
  behind Ray's HAProxy a request reaches vLLM's own server in one hop; the others have no
  HTTP route.

Editing one model changes only its application's ``args``: Serve restarts only its replicas.
A vLLM model's ``args`` also name the vLLM that checked its ``engine_kwargs`` here
(``engine_kwargs_checked_by``), so its build on the cluster skips importing vLLM again when
the cluster has that same vLLM (and checks them when it has another).
"""

from __future__ import annotations

import copy
from typing import Any

from common.rendered_apps import (
    CONFIG_FILE_ENV,
    MODEL_APP_IMPORT_PATH,
    MODEL_ROUTE_PREFIX,
    PLATFORM_IMPORT_PATH,
    ROUTER_DEPLOYMENT,
    ROUTER_IMPORT_PATH,
)
from configs import LoadedConfig
from configs.server_models import MODEL_APP_SETTINGS, ModelType

PLATFORM_ONLY_KEYS = ("models", "llm_configs", "groups")
ONE_HOP_ROUTER_SETTINGS = ("max_request_bytes", "max_upload_memory_bytes")
# The key entries (names, scopes, limits, where each key is read: never a value) go to the
# replicas that check keys as their deployment's ``user_config``, not in the ``args``: adding or
# removing an entry reconfigures the running replicas instead of restarting every model.
KEY_SETTINGS = ("api_keys", "api_keys_env")


def render_serve_config(
    raw: dict[str, Any], loaded: dict[str, LoadedConfig], source: str | None = None
) -> dict[str, Any]:
    """``raw`` (a Serve config whose platform applications were validated into ``loaded``) with
    every platform application split into its router and one application per deployment.
    ``source``: the config file's name, which the router reports (``/ready``, the console)."""
    rendered = copy.deepcopy(raw)
    applications = []
    for app in rendered.get("applications", []):
        name = app.get("name", "default")
        if app.get("import_path") != PLATFORM_IMPORT_PATH or name not in loaded:
            applications.append(app)
            continue
        applications += [router_application(app, source)] + model_applications(app, loaded[name])
    rendered["applications"] = applications
    return rendered


def router_application(app: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    args = {
        key: value
        for key, value in (app.get("args") or {}).items()
        if key not in PLATFORM_ONLY_KEYS + KEY_SETTINGS
    }
    router = {**app, "import_path": ROUTER_IMPORT_PATH, "args": args}
    router["deployments"] = copy.deepcopy(app.get("deployments") or [])
    _hand_over_keys(app.get("args") or {}, args, _deployment(router, ROUTER_DEPLOYMENT))
    if source:  # the router's alone: renaming the file restarts no model
        runtime_env = copy.deepcopy(app.get("runtime_env") or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), CONFIG_FILE_ENV: source}
        router["runtime_env"] = runtime_env
    return router


def model_applications(app: dict[str, Any], config: LoadedConfig) -> list[dict[str, Any]]:
    args = app.get("args") or {}
    raw_models = {
        entry.model_id: raw
        for entry, raw in zip(config.models, args[config.models_key], strict=True)
    }
    shared = {
        key: args[key] for key in MODEL_APP_SETTINGS if key in args and key not in KEY_SETTINGS
    }
    # the one-hop path's body limit and upload memory too
    router = {k: v for k, v in (args.get("router") or {}).items() if k in ONE_HOP_ROUTER_SETTINGS}
    if router:
        shared["router"] = router
    platform_app = app.get("name", "default")
    applications = []
    for spec in config.deployments():
        groups = [g for g in args.get("groups", []) if g.get("name") == spec.name]
        checker = _engine_kwargs_checker(spec.models)
        model_args = {
            **copy.deepcopy(shared),
            "platform_app": platform_app,
            "models": [raw_models[m.model_id] for m in spec.models],
            **({"groups": groups} if groups else {}),
            **({"engine_kwargs_checked_by": checker} if checker else {}),
        }
        one_hop = _serves_http(spec.models)
        # Outside the args, so an edit of the timeout or the keys reaches the replicas without
        # a restart.
        deployment = {
            "name": spec.name,
            "user_config": {"request_timeout_s": config.platform.router.request_timeout_s},
        }
        if one_hop:
            _hand_over_keys(args, model_args, deployment)
        applications.append(
            {
                "name": model_app_name(platform_app, spec.name),
                "route_prefix": one_hop_prefix(
                    app.get("route_prefix", "/"), spec.models[0].model_id
                )
                if one_hop
                else None,
                "import_path": MODEL_APP_IMPORT_PATH,
                **(
                    {"runtime_env": copy.deepcopy(app["runtime_env"])}
                    if app.get("runtime_env")
                    else {}
                ),
                "args": model_args,
                **({"deployments": [deployment]} if one_hop else {}),
            }
        )
    return applications


def with_live_keys(rendered: dict[str, Any], loaded: dict[str, LoadedConfig]) -> dict[str, Any]:
    """``rendered`` with each platform's API keys (``PlatformSettings.live_api_keys``: digests,
    never values) in the ``user_config`` of its router and of its one-hop model applications, as
    deployed: Serve hands a changed ``user_config`` to the running replicas (``reconfigure``), so
    keys rotated in this environment apply through ``--address`` without restarting a model.
    ``None`` where a key's variable is not set here: the replicas go back to the keys the cluster
    built them with. A ConfigError for keys read here but too short or given twice."""
    live = copy.deepcopy(rendered)
    for app in live.get("applications", []):
        is_router = app.get("import_path") == ROUTER_IMPORT_PATH
        if not is_router and app.get("import_path") != MODEL_APP_IMPORT_PATH:
            continue
        platform = app.get("name") if is_router else (app.get("args") or {}).get("platform_app")
        config = loaded.get(platform or "default")
        if config is None:
            continue
        keys = config.platform.live_api_keys()
        if is_router:
            _deployment(app, ROUTER_DEPLOYMENT).setdefault("user_config", {})
        for deployment in app.get("deployments", []):  # the router's; a one-hop model's
            if "user_config" in deployment:
                deployment["user_config"]["api_keys"] = keys
    return live


def _hand_over_keys(
    platform_args: dict[str, Any], args: dict[str, Any], deployment: dict[str, Any]
) -> None:
    """The platform's key entries (``KEY_SETTINGS``) into ``deployment``'s ``user_config``; its
    application's ``args`` say so (``keys_in_user_config``), and the replicas refuse every request
    until that user_config has arrived: Serve may pass a request to a replica's HTTP port before
    it applies the user_config."""
    args["keys_in_user_config"] = True
    deployment.setdefault("user_config", {})["key_sources"] = {
        key: copy.deepcopy(platform_args[key]) for key in KEY_SETTINGS if key in platform_args
    }


def _deployment(app: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry of ``app``'s ``deployments`` for ``name`` (the operator's own, if written)."""
    deployments = app.setdefault("deployments", [])
    for deployment in deployments:
        if deployment.get("name") == name:
            return deployment
    deployments.append({"name": name})
    return deployments[-1]


def model_app_name(platform_app: str, deployment: str) -> str:
    return f"{platform_app}.{deployment}"


def one_hop_prefix(platform_route_prefix: str | None, model_id: str) -> str:
    """``/models/<model_id>`` under the platform's route prefix."""
    return (platform_route_prefix or "").rstrip("/") + MODEL_ROUTE_PREFIX + model_id


def _engine_kwargs_checker(models: list) -> str | None:
    """The costly ``engine_kwargs`` check (vLLM's) that validating ``models`` has just run: the
    application's build, in a fresh process, skips it when it has the same library."""
    checkers = {type(model).engine_kwargs_checker() for model in models} - {None}
    return checkers.pop() if len(checkers) == 1 else None


def _serves_http(models: list) -> bool:
    """vLLM models answer HTTP on their own replicas (vLLM's OpenAI server)."""
    return len(models) == 1 and models[0].model_loading_config.type is ModelType.VLLM
