"""Where every replica would land on a cluster of identical nodes, before deploying.

Ray packs fractional GPU shares onto one GPU and gives a multi-GPU replica whole GPUs of one
node. This plans the peak (autoscaled models at ``max_replicas``) the same way, largest
replicas first, each on the GPU or node with the least room that still fits it, so a config
that cannot fit is refused with the replica and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.text_table import format_table
from configs import LoadedConfig
from configs.server_models import replica_range

EPSILON = 1e-9


class PlacementError(ValueError):
    pass


@dataclass
class Node:
    index: int
    cpus: float
    gpus: list[float] = field(default_factory=list)  # free share of each GPU


@dataclass(frozen=True)
class Placement:
    model_id: str
    replica: int
    node: int
    gpu_ids: tuple[int, ...]
    cpus: float


def replica_demands(loaded: dict[str, LoadedConfig]) -> list[tuple[str, int, float, float]]:
    """(model, replica number, GPUs, CPUs) for every replica at peak."""
    demands = []
    for config in loaded.values():
        for model in config.models:
            options = model.serve_options()
            actor = options["ray_actor_options"]
            _, count = replica_range(options)
            demands += [(model.model_id, i, actor.get("num_gpus", 0), actor.get("num_cpus", 1)) for i in range(count)]
    return demands


def plan(loaded: dict[str, LoadedConfig], nodes: int, gpus_per_node: int, cpus_per_node: float) -> list[Placement]:
    cluster = [Node(i, cpus_per_node, [1.0] * gpus_per_node) for i in range(nodes)]
    placements = []
    for model_id, replica, gpus, cpus in sorted(replica_demands(loaded), key=lambda d: (-d[2], -d[3])):
        placements.append(_place(cluster, model_id, replica, gpus, cpus, gpus_per_node))
    return sorted(placements, key=lambda p: (p.node, p.gpu_ids, p.model_id, p.replica))


def _place(cluster: list[Node], model_id: str, replica: int, gpus: float, cpus: float,
           gpus_per_node: int) -> Placement:
    who = f"{model_id} replica {replica + 1} ({gpus:g} GPU, {cpus:g} CPU)"
    if gpus > gpus_per_node:
        raise PlacementError(f"{who}: needs {gpus:g} GPUs on one node; nodes have {gpus_per_node}")
    options = []
    for node in cluster:
        if node.cpus + EPSILON < cpus:
            continue
        if 0 < gpus < 1:
            fits = [(free, gpu) for gpu, free in enumerate(node.gpus) if free + EPSILON >= gpus]
            if fits:
                free, gpu = min(fits)  # the fullest GPU that still has room
                options.append((free - gpus, node, (gpu,)))
        elif gpus >= 1:
            whole = [gpu for gpu, free in enumerate(node.gpus) if free >= 1 - EPSILON]
            if len(whole) >= gpus:
                options.append((len(whole) - gpus, node, tuple(whole[: int(gpus)])))
        else:
            options.append((node.cpus - cpus, node, ()))
    if not options:
        free = ", ".join(f"node {n.index}: {n.cpus:g} CPU, GPUs free {[round(g, 2) for g in n.gpus]}" for n in cluster)
        raise PlacementError(f"{who} does not fit; what is left: {free}")
    _, node, gpu_ids = min(options, key=lambda o: (o[0], o[1].index))
    node.cpus -= cpus
    for gpu in gpu_ids:
        node.gpus[gpu] -= min(gpus, 1.0)
    return Placement(model_id, replica + 1, node.index, gpu_ids, cpus)


def describe(placements: list[Placement]) -> str:
    rows = [("node", "gpus", "model_id", "replica", "cpus")]
    rows += [(str(p.node), ",".join(map(str, p.gpu_ids)) or "-", p.model_id, str(p.replica), f"{p.cpus:g}")
             for p in placements]
    return format_table(rows)
