"""Deploy ``model_config.yaml`` without the ``serve`` CLI (on a VM, in a script).

    python deploy_app.py --config model_config.yaml            # deploy, block until Ctrl-C
    python deploy_app.py --config model_config.yaml --dry-run  # validate and print the plan

It validates every application's ``args:`` before anything starts, then deploys the file
exactly as ``serve run`` does (same schema, per-application runtime_env, HTTP options).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import yaml

from common.serve_env import apply_streaming_env
from common.config_errors import ConfigError, ConfigIssue, issues_from_validation_error
from common.text_table import format_table
from configs import LoadedConfig, load_platform_config
from configs.server_models import replica_range, replica_shape

PLATFORM_IMPORT_PATH = "builders.app_builder:build_app"


def load_serve_config(path: str) -> tuple[Any, dict[str, LoadedConfig]]:
    """Parse a Serve config file and validate each platform application's ``args``."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    with open(path) as handle:
        raw = yaml.safe_load(handle)
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(issues_from_validation_error(err, ServeDeploySchema), prefix="") from None
    loaded: dict[str, LoadedConfig] = {}
    issues: list[ConfigIssue] = []
    for index, app in enumerate(schema.applications):
        if app.import_path != PLATFORM_IMPORT_PATH:
            continue
        try:
            loaded[app.name] = load_platform_config(app.args)
        except ConfigError as err:
            issues += [ConfigIssue(("applications", index, "args") + i.loc, i.message) for i in err.issues]
    if issues:
        raise ConfigError(issues, prefix="")
    return schema, loaded


def describe_plan(loaded: dict[str, LoadedConfig]) -> str:
    """One line per model: what serves it and what Ray must schedule for its deployment."""
    rows = [("app", "deployment", "model_id", "type", "serves", "replicas", "cpus", "gpus", "max_ongoing")]
    for app_name, config in loaded.items():
        for spec in config.deployments():
            shape = replica_shape(spec.options)
            low, high = replica_range(spec.options)
            replicas = f"{low}-{high} (auto)" if spec.options.get("autoscaling_config") else str(low)
            gpus = f"{shape.gpus:g}" + (f" ({len(shape.bundles)} bundles)" if len(shape.bundles) > 1 else "")
            for model in spec.models:
                rows.append((app_name, spec.name, model.model_id, model.model_loading_config.type.value,
                             ",".join(c.value for c in model.capabilities()), replicas, f"{shape.cpus:g}", gpus,
                             str(spec.options.get("max_ongoing_requests", 5))))
    return format_table(rows)


def deploy(schema: Any, loaded: dict[str, LoadedConfig], address: str | None, check_fit: bool = True,
           num_gpus: int | None = None) -> None:
    """Start (or join) a Ray cluster and deploy the config the way ``serve run`` does."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve._private.constants import SERVE_NAMESPACE

    apply_streaming_env()
    ray.init(address=address, namespace=SERVE_NAMESPACE, include_dashboard=False,
             **({"num_gpus": num_gpus} if num_gpus is not None and address is None else {}))
    if check_fit:
        _check_fit(loaded)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        controller_options=schema.controller_options,
    )
    client.deploy_apps(schema, _blocking=False)
    names = [app.name for app in schema.applications]
    print(f"deploying {', '.join(names)}; waiting for replicas to start ...", flush=True)
    while True:
        statuses = {name: serve.status().applications.get(name) for name in names}
        failed = {n: s.message for n, s in statuses.items() if s and s.status == "DEPLOY_FAILED"}
        if failed:
            raise SystemExit(f"deploy failed: {failed}")
        if all(s and s.status == "RUNNING" for s in statuses.values()):
            break
        time.sleep(2)
    http = schema.http_options
    print(f"ready: http://{http.host}:{http.port}/v1 (Ctrl-C to stop)", flush=True)


def _check_fit(loaded: dict[str, LoadedConfig]) -> None:
    """Refuse, before deploying, a config whose replicas cannot all fit on the cluster's nodes
    (replicas that never schedule would otherwise wait forever as PENDING)."""
    from builders.placement import PlacementError, live_nodes, plan_on

    nodes = live_nodes()
    try:
        plan_on(loaded, nodes)
    except PlacementError as err:
        shape = ", ".join(f"{n.cpus:g} CPU/{len(n.gpus)} GPU" for n in nodes)
        raise SystemExit(f"cannot place the config on this cluster ({shape}): {err}\n"
                         "(on an autoscaling cluster, pass --no-fit-check)") from None


def _print_placement(loaded: dict[str, LoadedConfig], args: argparse.Namespace) -> int:
    from builders.placement import PlacementError, describe, plan

    try:
        placements = plan(loaded, args.nodes, args.gpus_per_node, args.cpus_per_node)
    except PlacementError as err:
        print(f"{args.config}: cannot place on {args.nodes} x {args.gpus_per_node} GPUs: {err}", file=sys.stderr)
        return 1
    print(f"\nat peak replicas on {args.nodes} node(s) x {args.gpus_per_node} GPUs, {args.cpus_per_node:g} CPUs:")
    print(describe(placements))
    return 0


def _stop_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt  # shut Serve down the same way as on Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="model_config.yaml")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan, start nothing")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    parser.add_argument("--plan", action="store_true",
                        help="print where every replica would land on --nodes x --gpus-per-node, start nothing")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-node", type=float, default=64)
    parser.add_argument("--num-gpus", type=int, default=None,
                        help="GPUs of the local Ray this starts (default: detected); more than the machine has "
                             "are logical GPUs, to try placement on a CPU machine")
    parser.add_argument("--no-fit-check", action="store_true",
                        help="deploy even when the replicas do not fit the cluster's current nodes (autoscaling)")
    args = parser.parse_args(argv)
    try:
        schema, loaded = load_serve_config(args.config)
    except ConfigError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 1
    print(describe_plan(loaded))
    if args.plan:
        return _print_placement(loaded, args)
    if args.dry_run:
        return 0
    deploy(schema, loaded, args.address, check_fit=not args.no_fit_check, num_gpus=args.num_gpus)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
