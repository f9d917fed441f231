"""Each model's phase on a running platform, read from the Serve controller and the cluster's
free resources (``deploy_app.py status``, and the progress lines while ``deploy_app.py`` waits):

- ``waiting``: a replica Ray cannot place yet, with what it needs and the most any node has free
  ("needs GPU 0.4, CPU 1; largest free on a node: GPU 0.2, CPU 6");
- ``downloading``: a replica fetching the model's files, with the bytes it has of the total
  (``cloud/download_progress.py``);
- ``loading``: replicas placed and starting (loading weights, starting vLLM);
- ``failing``: replicas that failed to start while Serve retries, with the replica's error;
- ``ready``: every replica running; ``failed``: Serve gave up, with the replica's error.

``/ready`` shows the same phase for each model that is not ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud.download_progress import Download, read_downloads
from common.rendered_apps import (
    MODEL_APP_IMPORT_PATH,
    PLATFORM_IMPORT_PATH,
    VARIANT_ROUTER_DEPLOYMENT,
)
from common.text_table import format_table
from configs.server_models import engine_deployment_name

READY, WAITING, DOWNLOADING, LOADING, FAILING, FAILED = (
    "ready",
    "waiting",
    "downloading",
    "loading",
    "failing",
    "failed",
)
UNAVAILABLE = "unavailable"  # not ready, and the controller names no phase for the model
SHOWN_RESOURCES = ("GPU", "CPU", "memory")


@dataclass(frozen=True)
class ModelPhase:
    app: str
    model_ids: tuple[str, ...]
    phase: str
    detail: str
    replicas_running: int = 0
    replicas_target: int = 0
    replica_nodes: tuple[str, ...] = ()  # the address of each running replica's node


def model_phases(
    details: dict[str, Any],
    free_per_node: list[dict[str, float]],
    downloads: dict[str, Download] | None = None,
) -> list[ModelPhase]:
    """The phase of every model in ``details`` (Serve's ``get_serve_details()``), whichever way
    the platform runs: one application per model (``deploy_app.py``, the rendered config) or the
    file as one application (``serve run model_config.yaml``); ``downloads``: the replicas'
    download progress by ``<app>/<model_id>``."""
    phases = []
    for app_name, app in sorted((details.get("applications") or {}).items()):
        for model_ids, names in _engines(app.get("deployed_app_config") or {}):
            phases += _engine_phases(app_name, app, model_ids, names, free_per_node, downloads)
    return phases


def _engines(config: dict[str, Any]) -> list[tuple[tuple[str, ...], list[str] | None]]:
    """The models of an application and the deployments that hold them (None: all of the
    application's). A model application's deployments are its engine and, for a model with
    variants, its VariantRouter; the platform as one application holds the router and one engine
    deployment per ungrouped model and per group."""
    import_path, args = config.get("import_path"), config.get("args") or {}
    entries = [
        (entry, model_id)
        for entry in args.get("models", args.get("llm_configs")) or []
        if (model_id := _model_id(entry)) is not None
    ]
    if import_path == MODEL_APP_IMPORT_PATH:
        return [(tuple(model_id for _, model_id in entries), None)]
    if import_path != PLATFORM_IMPORT_PATH:
        return []  # the router alone, or an application that is not the platform's
    held: dict[str, list[str]] = {}
    for entry, model_id in entries:
        held.setdefault(entry_deployment_name(entry, model_id), []).append(model_id)
    return [(tuple(model_ids), [name]) for name, model_ids in held.items()]


def _model_id(entry: Any) -> str | None:
    loading = entry.get("model_loading_config") if isinstance(entry, dict) else None
    return loading.get("model_id") if isinstance(loading, dict) else None


def entry_deployment_name(entry: dict[str, Any], model_id: str) -> str:
    """The engine deployment of a model entry as the config file holds it (unvalidated)."""
    deployment = entry.get("deployment_config") or {}
    return engine_deployment_name(entry.get("group"), deployment.get("name"), model_id)


def _engine_phases(
    app_name: str,
    app: dict[str, Any],
    model_ids: tuple[str, ...],
    names: list[str] | None,
    free_per_node: list[dict[str, float]],
    downloads: dict[str, Download] | None,
) -> list[ModelPhase]:
    """The phase of the deployments ``names`` of ``app`` (all of them: None), which hold
    ``model_ids``."""
    # The model's engine deployment; then a model with variants has its VariantRouter, shown
    # only while it is not ready (the model's one-hop URL cannot route until it is).
    deployments = sorted(
        (
            (name, deployment)
            for name, deployment in (app.get("deployments") or {}).items()
            if names is None or name in names
        ),
        key=lambda d: d[0] == VARIANT_ROUTER_DEPLOYMENT,
    )
    if not deployments:  # the application is still being built, or its build failed
        if app.get("status") == "DEPLOY_FAILED":
            return [ModelPhase(app_name, model_ids, FAILED, _error_of(app.get("message") or ""))]
        return [
            ModelPhase(
                app_name, model_ids, LOADING, app.get("message") or "building the application"
            )
        ]
    phases = []
    for name, deployment in deployments:
        phase, detail = _phase(deployment, free_per_node)
        if name == VARIANT_ROUTER_DEPLOYMENT:
            if phase == READY:
                continue
            detail = f"{name}: {detail}"
        replicas = deployment.get("replicas") or []
        running = [r for r in replicas if r.get("state") == "RUNNING"]
        phases.append(
            ModelPhase(
                app_name,
                model_ids,
                *_with_downloads(phase, detail, app_name, model_ids, downloads or {}),
                len(running),
                deployment.get("target_num_replicas", len(replicas)),
                tuple(sorted(r["node_ip"] for r in running if r.get("node_ip"))),
            )
        )
    return phases


def _with_downloads(
    phase: str, detail: str, app: str, model_ids: tuple[str, ...], downloads: dict[str, Download]
) -> tuple[str, str]:
    """A loading model whose weights are still arriving is downloading (bytes of total); a
    ready one says what it downloaded."""
    own = {
        model_id: downloads[f"{app}/{model_id}"]
        for model_id in model_ids
        if f"{app}/{model_id}" in downloads
    }
    arriving = {model_id: d for model_id, d in own.items() if not d.finished}
    named = lambda model_id: f"{model_id} " if len(model_ids) > 1 else ""  # noqa: E731
    if phase == LOADING and arriving:
        return DOWNLOADING, "; ".join(named(m) + d.describe() for m, d in arriving.items())
    if phase == READY and own:
        return phase, "; ".join(
            [detail] + [named(m) + d.describe() for m, d in own.items() if d.finished]
        )
    return phase, detail


def _phase(deployment: dict[str, Any], free_per_node: list[dict[str, float]]) -> tuple[str, str]:
    status, message = deployment.get("status"), deployment.get("message") or ""
    replicas = deployment.get("replicas") or []
    running = sum(1 for r in replicas if r.get("state") == "RUNNING")
    target = deployment.get("target_num_replicas", len(replicas))
    if status == "HEALTHY":
        if target == 0:
            return READY, "scaled to zero: the first request starts a replica"
        return READY, f"{running}/{target} replicas running"
    if status in ("DEPLOY_FAILED", "UNHEALTHY"):
        return FAILED, _error_of(message)
    if "failed to start" in message:  # Serve retries the replica; its error is in the message
        return FAILING, _error_of(message)
    unplaced = [r for r in replicas if r.get("state") == "STARTING" and not r.get("node_id")]
    needs = {
        k: v
        for k, v in (deployment.get("required_resources") or {}).items()
        if v and k in SHOWN_RESOURCES
    }
    if unplaced and needs:  # a replica that needs none of them is only being scheduled
        largest = {k: max((node.get(k, 0) for node in free_per_node), default=0) for k in needs}
        return (
            WAITING,
            f"{len(unplaced)} replica(s) not placed: needs {_resources(needs)}; "
            f"largest free on a node: {_resources(largest)}",
        )
    starting = sum(1 for r in replicas if r.get("state") in ("STARTING", "UPDATING", "RECOVERING"))
    return LOADING, f"{starting} replica(s) starting, {running}/{target} running"


def _error_of(message: str) -> str:
    """The replica's own error out of Serve's message: its last line that says something."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no message"])[-1][:300]


def _resources(resources: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v / 2**30:.1f} GiB" if k == "memory" else f"{k} {v:g}" for k, v in resources.items()
    )


def describe(phases: list[ModelPhase]) -> str:
    rows = [("application", "models", "phase", "nodes", "detail")]
    rows += [
        (p.app, ",".join(p.model_ids), p.phase, ",".join(p.replica_nodes) or "-", p.detail)
        for p in phases
    ]
    return format_table(rows)


def read_phases() -> list[ModelPhase]:
    """The phases on the Ray cluster this process is connected to."""
    return read_deploy_state()[1]


def phases_by_model() -> dict[str, ModelPhase]:
    """Each model's phase (from the Ray cluster this process is in), by model id."""
    return {model_id: phase for phase in read_phases() for model_id in phase.model_ids}


def read_deploy_state() -> tuple[dict[str, str], list[ModelPhase]]:
    """Every application's status (``RUNNING``, ``DEPLOY_FAILED``, ...) and every model's phase,
    from one read of the Serve controller."""
    from ray._private.state import available_resources_per_node
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    statuses = {
        name: app.get("status") for name, app in (details.get("applications") or {}).items()
    }
    return statuses, model_phases(
        details, list(available_resources_per_node().values()), read_downloads()
    )


def status_command(argv: list[str]) -> int:
    """``deploy_app.py status [--address ADDRESS]``: every model's phase; 0 when all are ready."""
    import argparse
    import sys

    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    parser = argparse.ArgumentParser(
        prog="deploy_app.py status", description=status_command.__doc__
    )
    parser.add_argument(
        "--address", default="auto", help="the Ray cluster (default: the one on this machine)"
    )
    args = parser.parse_args(argv)
    try:
        ray.init(
            address=args.address,
            namespace=SERVE_NAMESPACE,
            logging_level="ERROR",
            log_to_driver=False,
        )
        phases = read_phases()
    except Exception as err:  # no Ray there, or no Serve on it
        print(f"no platform found at {args.address}: {err}", file=sys.stderr)
        return 1
    print(describe(phases))
    return 0 if phases and all(p.phase == READY for p in phases) else 1
