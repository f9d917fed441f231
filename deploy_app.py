"""Deploy ``model_config.yaml``: one Serve application per model, plus the router.

    # start Ray here, deploy, block until Ctrl-C
    python deploy_app.py --config model_config.yaml
    # apply the file to the running platform, return when live (--watch: again on each save)
    python deploy_app.py --config model_config.yaml --address auto [--watch]
    python deploy_app.py --config model_config.yaml --dry-run   # validate and print the plan
    # where replicas land, GPU memory
    python deploy_app.py --config model_config.yaml --plan --gpu-type L4
    # print the Serve config it deploys (--working-dir: with the code shipped)
    python deploy_app.py --config model_config.yaml --render [--working-dir /shared/code]
    python deploy_app.py status   # every model's phase (exit 0: all ready)
    # the file's JSON Schema (--write: the committed copy; --check FILE...: validate files)
    python deploy_app.py schema [--write | --check model_config.yaml]
    # offline, Ray Data
    python deploy_app.py batch --model tiny-chat --input prompts.jsonl --output answers.jsonl
    # a KubeRay manifest
    python deploy_app.py kuberay rayservice --image REGISTRY/rayserve-platform:TAG

It validates every application's ``args:`` before anything starts (a bad edit changes
nothing), renders each model as its own application (``builders/render.py``) and applies
the result declaratively, as ``serve deploy`` would: applications whose config is unchanged
keep their replicas, removed models' applications are deleted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml

from builders.gpu_memory import GPU_MEMORY_GIB, cluster_gpu_type, gpu_bytes_for
from builders.plan_report import check_memory, describe_plan, memory_estimates
from builders.render import render_serve_config, with_live_keys
from builders.serve_config import (
    default_config_file,
    load_yaml,
    rendered_schema,
    validate_serve_config,
)
from builders.shipped_code import with_shipped_code, working_dir_uri
from common.config_errors import ConfigError
from common.local_ray import forget_dead_cluster
from common.rendered_apps import PLATFORM_IMPORT_PATH
from common.serve_env import apply_streaming_env, stop_leftover_haproxy
from configs import LoadedConfig, require_secrets

READY_POLL_S = 2


def deploy(
    schema: Any,
    loaded: dict[str, LoadedConfig],
    address: str | None,
    check_fit: bool = True,
    num_gpus: int | None = None,
    gpu_bytes: int | None = None,
    metrics_port: int | None = None,
    num_cpus: float | None = None,
    node_ip_address: str | None = None,
) -> bool:
    """Start (or join) a Ray cluster, apply the rendered config, and wait until it is live;
    False when a model failed to start (the others serve)."""
    import ray
    from ray.serve._private import api as serve_api

    if not ray.is_initialized():  # the first apply of this process (--watch applies again)
        _connect(schema, address, num_gpus, metrics_port, num_cpus, node_ip_address)
    if check_fit:
        _check_fit(loaded, gpu_bytes)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        controller_options=schema.controller_options,
    )
    client.deploy_apps(schema, _blocking=False)
    failed = wait_until_live([app.name for app in schema.applications])
    if failed:  # the others serve; `deploy_app.py status` shows why these did not start
        print(
            f"failed to start: {', '.join(failed)} (see `python deploy_app.py status`); "
            "the other models serve",
            file=sys.stderr,
            flush=True,
        )
    http = schema.http_options
    here = ray.util.get_node_ip_address()
    for node in ray.nodes():
        if node["Alive"] and node["NodeManagerAddress"] == here:
            print(
                f"metrics (Ray's Prometheus endpoint on this node): http://{here}:{node['MetricsExportPort']}/metrics",
                flush=True,
            )
            break
    print(f"ready: http://{http.host}:{http.port}/v1", flush=True)
    return not failed


def _connect(
    schema: Any,
    address: str | None,
    num_gpus: int | None,
    metrics_port: int | None,
    num_cpus: float | None = None,
    node_ip_address: str | None = None,
) -> None:
    """Join the Ray cluster at ``address``, or start one here when it is None; as a driver of
    the node at ``node_ip_address`` when given (Ray's pick among several nodes of one host)."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    apply_streaming_env(schema.http_options.port if address is None else None)
    if address is None:
        forget_dead_cluster()
    local: dict[str, Any] = {"num_gpus": num_gpus} if num_gpus is not None else {}
    if num_cpus is not None:
        local["num_cpus"] = num_cpus
    if metrics_port is not None:
        local["_metrics_export_port"] = metrics_port
    context = ray.init(
        address=address,
        namespace=SERVE_NAMESPACE,
        include_dashboard=False,
        _node_ip_address=node_ip_address,
        **(local if address is None else {}),
    )
    if address is None:  # as `ray start` does, so `--address auto` finds this Ray to apply edits
        from ray._private.utils import write_ray_address

        write_ray_address(context.address_info["gcs_address"])
    # ray.init, started or joined, replaced the handler: Ray's exits without shutting Serve down,
    # and the C++ one beneath it aborts the process 3 s after a SIGTERM, mid-way through a stop.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)


def watch_and_apply(
    path: str, apply: Callable[[], bool], stop: threading.Event | None = None
) -> None:
    """Call ``apply`` each time the file at ``path`` is saved with new content, until Ctrl-C.

    The file's directory is watched, not the file: editors save by writing a new file and
    renaming it over the old one. ``apply`` validates before it changes anything, so a bad
    save is reported and the platform keeps what it runs. ``stop`` ends the watch as Ctrl-C does."""
    from watchfiles import watch

    path = os.path.abspath(path)
    last = _read(path)
    print(f"watching {path}: each save is applied (Ctrl-C stops watching)", flush=True)
    for _ in watch(
        os.path.dirname(path),
        watch_filter=lambda _change, changed: changed == path,
        stop_event=stop,
    ):
        content = _read(path)
        if content is None or content == last:  # removed mid-save, or saved unchanged
            continue
        last = content
        print(f"{path} changed: applying", flush=True)
        apply()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def wait_until_live(names: list[str]) -> list[str]:
    """Block until every application in ``names`` runs or has failed and no other is left,
    printing each model's phase as it changes; the applications that failed."""
    from serve.platform_status import read_deploy_state

    print(f"applying {len(names)} applications: {', '.join(names)}", flush=True)
    shown: dict[str, str] = {}
    while True:
        statuses, phases = read_deploy_state()
        for name in statuses:
            if name not in names and shown.get(name) != "removing":
                print(f"  {name}: being removed", flush=True)
                shown[name] = "removing"
        for phase in phases:
            line = f"{phase.phase}: {phase.detail}"
            if shown.get(phase.app) != line:
                print(f"  {phase.app} ({','.join(phase.model_ids)}) {line}", flush=True)
                shown[phase.app] = line
        failed = [n for n, status in statuses.items() if n in names and status == "DEPLOY_FAILED"]
        if set(statuses) == set(names) and all(
            status == "RUNNING" or n in failed for n, status in statuses.items()
        ):
            return failed
        time.sleep(READY_POLL_S)


def _check_fit(loaded: dict[str, LoadedConfig], gpu_bytes: int | None) -> None:
    """Refuse, before deploying, a config whose replicas cannot all fit on the cluster's nodes
    (replicas that never schedule would otherwise wait forever as PENDING), or in their GPUs'
    memory (given, or known from the cluster's GPU type; vLLM would fail to start)."""
    from builders.placement import PlacementError, live_nodes, plan_on

    nodes = live_nodes()
    try:
        plan_on(loaded, nodes)
    except PlacementError as err:
        shape = ", ".join(f"{n.cpus:g} CPU/{len(n.gpus)} GPU" for n in nodes)
        raise SystemExit(
            f"cannot place the config on this cluster ({shape}): {err}\n"
            "(on an autoscaling cluster, pass --no-fit-check)"
        ) from None
    gpu_type = cluster_gpu_type()
    gpu_bytes = gpu_bytes or gpu_bytes_for(gpu_type, None)
    problems = (
        check_memory(loaded, memory_estimates(loaded, gpu_bytes), gpu_bytes) if gpu_bytes else []
    )
    if problems:
        raise SystemExit(
            f"the config does not fit the cluster's GPU memory ({gpu_type or 'given'}):\n  "
            + "\n  ".join(problems)
        )


def _print_placement(loaded: dict[str, LoadedConfig], args: argparse.Namespace, gpu: str) -> int:
    from builders.placement import PlacementError, describe, plan

    try:
        placements = plan(loaded, args.nodes, args.gpus_per_node, args.cpus_per_node)
    except PlacementError as err:
        print(
            f"{args.config}: cannot place on {args.nodes} x {args.gpus_per_node} GPUs: {err}",
            file=sys.stderr,
        )
        return 1
    print(
        f"\nat peak replicas on {args.nodes} node(s) x {args.gpus_per_node} {gpu}, "
        f"{args.cpus_per_node:g} CPUs:"
    )
    print(describe(placements))
    return 0


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


SERVE_STOP_S = 15  # how long a stop waits for Serve's controller to stop the replicas


def _stop_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt  # shut Serve down the same way as on Ctrl-C


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        from batch.job import batch_command

        return batch_command(argv[1:])
    if argv[:1] == ["status"]:
        from serve.platform_status import status_command

        return status_command(argv[1:])
    if argv[:1] == ["schema"]:
        from builders.schema_command import schema_command

        return schema_command(argv[1:])
    if argv[:1] == ["kuberay"]:
        from builders.kuberay import main as kuberay_command

        return kuberay_command(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=default_config_file(),
        help="default: $PLATFORM_CONFIG, else model_config.yaml",
    )
    parser.add_argument(
        "--http-host",
        default=os.environ.get("PLATFORM_HTTP_HOST"),
        help="listen on this address instead of the file's http_options.host (default: "
        "$PLATFORM_HTTP_HOST; the container image sets 0.0.0.0, its own network's every interface)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan, start nothing"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="print the Serve config that runs the file (one application per model), start nothing",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="apply the file to this Ray cluster's platform ('auto': the one on this machine) "
        "and return once live (default: start a local Ray and serve until Ctrl-C)",
    )
    parser.add_argument(
        "--node-ip-address",
        default=None,
        help="with --address: join as a driver of the Ray node at this address (as `ray start "
        "--node-ip-address`), where several nodes share one host; default: Ray's pick, the head "
        "if it runs here",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print where every replica would land on --nodes x --gpus-per-node, start nothing",
    )
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-node", type=float, default=64)
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=None,
        help="GPUs of the local Ray this starts (default: detected); more than the machine has "
        "are logical GPUs, to try placement on a CPU machine",
    )
    parser.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        help="CPUs of the local Ray this starts (default: the machine's cores); more are logical "
        "CPUs, for replicas whose num_cpus add up to more than the machine has",
    )
    parser.add_argument(
        "--gpu-type",
        choices=sorted(GPU_MEMORY_GIB),
        default=None,
        help="the GPUs' type, for their memory (--plan: H100-80GB unless --gpu-memory-gib)",
    )
    parser.add_argument(
        "--gpu-memory-gib", type=float, default=None, help="memory of each GPU, in GiB"
    )
    parser.add_argument(
        "--metrics-export-port",
        type=int,
        default=_env_int("PLATFORM_METRICS_EXPORT_PORT"),
        help="port of the Ray metrics endpoint that Prometheus scrapes, for the Ray this starts "
        "(default: Ray picks one and this prints it)",
    )
    parser.add_argument(
        "--working-dir",
        default=None,
        metavar="DIR_OR_URI",
        help="ship the platform's code in every application's runtime_env, for a cluster that "
        "does not run in this repository: a directory (the code's zip is written there, "
        "named by a file:// URI) or the URI of that zip uploaded elsewhere (s3://, gs://, https://)",
    )
    parser.add_argument(
        "--no-fit-check",
        action="store_true",
        help="deploy even when the replicas do not fit the cluster's current nodes (autoscaling)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="after deploying, apply the file again each time it is saved, until Ctrl-C "
        "(a bad save is reported and changes nothing)",
    )
    args = parser.parse_args(argv)
    try:
        rendered, schema, loaded = _load(args)
    except ConfigError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 1
    if args.render:
        yaml.safe_dump(rendered, sys.stdout, sort_keys=False)
        return 0
    gpu_type = args.gpu_type or ("H100-80GB" if args.plan and not args.gpu_memory_gib else None)
    gpu_bytes = gpu_bytes_for(gpu_type, args.gpu_memory_gib)
    estimates = memory_estimates(loaded, gpu_bytes)
    print(describe_plan(loaded, estimates))
    problems = check_memory(loaded, estimates, gpu_bytes) if gpu_bytes else []
    gpu = (
        f"GPUs of {gpu_bytes / 1024**3:.1f} GiB" + (f" ({gpu_type})" if gpu_type else "")
        if gpu_bytes
        else "GPUs"
    )
    if problems and (args.plan or args.dry_run):
        print(f"{args.config}: does not fit {gpu}:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    if args.plan:
        return _print_placement(loaded, args, gpu)
    if args.dry_run:
        return 0
    try:
        _check_secrets(args, loaded)
    except ConfigError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 1

    def run(schema: Any, loaded: dict[str, LoadedConfig]) -> bool:
        return deploy(
            schema,
            loaded,
            args.address,
            check_fit=not args.no_fit_check,
            num_gpus=args.num_gpus,
            gpu_bytes=gpu_bytes,
            metrics_port=args.metrics_export_port,
            num_cpus=args.num_cpus,
            node_ip_address=args.node_ip_address,
        )

    def run_saved_file() -> bool:
        """--watch: the file as saved now, validated before anything changes."""
        try:
            _, schema, loaded = _load(args)
            _check_secrets(args, loaded)
        except ConfigError as err:
            print(
                f"{args.config}: {err}\nnothing changed; the platform runs the last good file",
                file=sys.stderr,
                flush=True,
            )
            return False
        try:
            return run(schema, loaded)
        except SystemExit as refused:  # it does not fit the cluster: said, and nothing changed
            print(refused, file=sys.stderr, flush=True)
            return False

    # From here on, SIGTERM is Ctrl-C (_connect sets it again).
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if args.address is not None and not args.watch:
        try:
            # applied to a running platform, which keeps serving
            return 0 if run(schema, loaded) else 1
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: what Serve was sent goes on without this process
            print(
                "interrupted; the running platform keeps serving "
                "(`python deploy_app.py status` shows what)",
                file=sys.stderr,
                flush=True,
            )
            return 130
    try:
        run(schema, loaded)
        if args.watch:
            watch_and_apply(args.config, run_saved_file)
        while args.address is None:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, while starting, serving or watching
        # The platform started here stops with it; one joined keeps running.
        if args.address is None:
            _shut_down()
    return 0


def _load(args: argparse.Namespace) -> tuple[dict, Any, dict[str, LoadedConfig]]:
    """The file validated and rendered: (Serve config, its schema, the loaded models); ConfigError
    names the field of a bad one."""
    raw = load_yaml(args.config)
    if args.http_host and isinstance(raw, dict):
        raw = {**raw, "http_options": {**(raw.get("http_options") or {}), "host": args.http_host}}
    _, loaded = validate_serve_config(raw)
    if args.working_dir:
        raw = with_shipped_code(raw, working_dir_uri(args.working_dir), PLATFORM_IMPORT_PATH)
    rendered = render_serve_config(raw, loaded, os.path.basename(args.config))
    # Deployed with the keys as this environment holds them (--render prints none of them).
    return rendered, rendered_schema(with_live_keys(rendered, loaded)), loaded


def _check_secrets(args: argparse.Namespace, loaded: dict[str, LoadedConfig]) -> None:
    if args.address is None:  # the Ray started here serves with this environment's secrets
        for config in loaded.values():
            require_secrets(config.platform)


def _shut_down() -> None:
    import ray

    if not ray.is_initialized():  # stopped before Ray started: nothing runs
        return
    from ray._common.utils import reset_ray_address
    from ray.serve.context import _get_global_client

    # Serve waits up to 30 s for its controller, then Ray stops what is left: within a
    # container's grace period (Kubernetes' and podman's default: 30 s) only when bounded here.
    _get_global_client().shutdown(timeout_s=SERVE_STOP_S)
    if left := stop_leftover_haproxy():
        print(f"stopped HAProxy {left}, started for a reload as Serve shut down", file=sys.stderr)
    reset_ray_address()


if __name__ == "__main__":
    sys.exit(main())
