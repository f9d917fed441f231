"""Each model's phase on a running platform, read from the Serve controller and the cluster's
free resources (``deploy_app.py status``, and the progress lines while ``deploy_app.py`` waits):

- ``waiting``: a replica Ray cannot place yet, with what it needs and the most any node has free
  ("needs GPU 0.4, CPU 1; largest free on a node: GPU 0.2, CPU 6");
- ``loading``: replicas placed and starting (downloading and loading weights, starting vLLM);
- ``failing``: replicas that failed to start while Serve retries, with the replica's error;
- ``ready``: every replica running; ``failed``: Serve gave up, with the replica's error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builders.render import MODEL_APP_IMPORT_PATH
from common.text_table import format_table

READY, WAITING, LOADING, FAILING, FAILED = "ready", "waiting", "loading", "failing", "failed"
SHOWN_RESOURCES = ("GPU", "CPU", "memory")


@dataclass(frozen=True)
class ModelPhase:
    app: str
    model_ids: tuple[str, ...]
    phase: str
    detail: str


def model_phases(details: dict[str, Any], free_per_node: list[dict[str, float]]) -> list[ModelPhase]:
    """The phase of every model application in ``details`` (Serve's ``get_serve_details()``)."""
    phases = []
    for app_name, app in sorted((details.get("applications") or {}).items()):
        config = app.get("deployed_app_config") or {}
        if config.get("import_path") != MODEL_APP_IMPORT_PATH:
            continue
        model_ids = tuple(m["model_loading_config"]["model_id"] for m in (config.get("args") or {}).get("models", []))
        deployments = list((app.get("deployments") or {}).values())
        if not deployments:  # the application is still being built
            phases.append(ModelPhase(app_name, model_ids, LOADING, app.get("message") or "building the application"))
            continue
        for deployment in deployments:
            phases.append(ModelPhase(app_name, model_ids, *_phase(deployment, free_per_node)))
    return phases


def _phase(deployment: dict[str, Any], free_per_node: list[dict[str, float]]) -> tuple[str, str]:
    status, message = deployment.get("status"), deployment.get("message") or ""
    replicas = deployment.get("replicas") or []
    running = sum(1 for r in replicas if r.get("state") == "RUNNING")
    target = deployment.get("target_num_replicas", len(replicas))
    if status == "HEALTHY":
        return READY, f"{running}/{target} replicas running"
    if status in ("DEPLOY_FAILED", "UNHEALTHY"):
        return FAILED, _error_of(message)
    if "failed to start" in message:  # Serve retries the replica; its error is in the message
        return FAILING, _error_of(message)
    unplaced = [r for r in replicas if r.get("state") == "STARTING" and not r.get("node_id")]
    if unplaced:
        needs = {k: v for k, v in (deployment.get("required_resources") or {}).items() if v and k in SHOWN_RESOURCES}
        largest = {k: max((node.get(k, 0) for node in free_per_node), default=0) for k in needs}
        return WAITING, f"{len(unplaced)} replica(s) not placed: needs {_resources(needs)}; " \
                        f"largest free on a node: {_resources(largest)}"
    starting = sum(1 for r in replicas if r.get("state") in ("STARTING", "UPDATING", "RECOVERING"))
    return LOADING, f"{starting} replica(s) starting, {running}/{target} running"


def _error_of(message: str) -> str:
    """The replica's own error out of Serve's message: its last line that says something."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no message"])[-1][:300]


def _resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 2**30:.1f} GiB" if k == "memory" else f"{k} {v:g}" for k, v in resources.items())


def describe(phases: list[ModelPhase]) -> str:
    rows = [("application", "models", "phase", "detail")]
    rows += [(p.app, ",".join(p.model_ids), p.phase, p.detail) for p in phases]
    return format_table(rows)


def read_phases() -> list[ModelPhase]:
    """The phases on the Ray cluster this process is connected to."""
    return read_deploy_state()[1]


def read_deploy_state() -> tuple[dict[str, str], list[ModelPhase]]:
    """Every application's status (``RUNNING``, ``DEPLOY_FAILED``, ...) and every model's phase,
    from one read of the Serve controller."""
    from ray._private.state import available_resources_per_node
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    statuses = {name: app.get("status") for name, app in (details.get("applications") or {}).items()}
    return statuses, model_phases(details, list(available_resources_per_node().values()))
