"""Arithmetic on a deployment's Serve options (the dict ``serve.deployment`` takes): what one
replica reserves from Ray and how many replicas run. Placement, the plan, KubeRay worker
groups, batch jobs and the router's capacity all read the options through these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Serve batches a batching engine may hold at once to merge into one model call (see
# servers/batching.py); such replicas' default queue holds this many full batches.
MERGED_BATCHES = 16


@dataclass(frozen=True)
class ReplicaShape:
    """What Ray reserves for one replica: its bundles (GPUs, CPUs) and how they may spread."""

    bundles: tuple[tuple[float, float], ...]
    strategy: str = "STRICT_PACK"

    @property
    def gpus(self) -> float:
        return sum(gpus for gpus, _ in self.bundles)

    @property
    def cpus(self) -> float:
        return sum(cpus for _, cpus in self.bundles)


def replica_shape(serve_options: dict[str, Any]) -> ReplicaShape:
    """The replica's placement group when it has one, else its actor's own resources."""
    bundles = serve_options.get("placement_group_bundles")
    if bundles:
        return ReplicaShape(
            tuple((b.get("GPU", 0), b.get("CPU", 0)) for b in bundles),
            serve_options.get("placement_group_strategy") or "PACK",
        )
    actor = serve_options.get("ray_actor_options", {})
    return ReplicaShape(((actor.get("num_gpus", 0), actor.get("num_cpus", 1)),))


def replica_range(serve_options: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) replicas a deployment runs: ``num_replicas``, or the autoscaling bounds."""
    if serve_options.get("num_replicas"):
        return serve_options["num_replicas"], serve_options["num_replicas"]
    scaling = serve_options.get("autoscaling_config") or {}
    return scaling.get("min_replicas", 1), scaling.get("max_replicas", 1)
