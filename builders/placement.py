"""Where every replica would land, before deploying: on N identical nodes (``--plan``) or on
the running cluster's nodes (the check ``deploy_app.py`` makes before it deploys).

Ray packs fractional GPU shares onto one GPU, gives a multi-GPU replica whole GPUs of one
node, and places a replica's placement-group bundles by the group's strategy. This plans the
peak (autoscaled models at ``max_replicas``) the same way, largest replicas first, each on the
GPU or node with the least room that still fits it, so a config that cannot fit is refused
with the replica and the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from common.serve_options import ReplicaShape, replica_range, replica_shape
from common.text_table import format_table
from configs import LoadedConfig

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
    deployment: str
    replica: int
    slots: tuple[tuple[int, tuple[int, ...]], ...]  # (node, GPU ids) of each bundle
    cpus: float

    @property
    def node(self) -> int:
        return self.slots[0][0]

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(sorted({node for node, _ in self.slots}))

    @property
    def gpu_ids(self) -> tuple[int, ...]:
        return tuple(gpu for _, gpus in self.slots for gpu in gpus)


def replica_demands(loaded: dict[str, LoadedConfig]) -> list[tuple[str, int, ReplicaShape]]:
    """(deployment, replica number, bundles and strategy) for every replica at peak."""
    demands = []
    for config in loaded.values():
        for spec in config.deployments():
            _, count = replica_range(spec.options)
            demands += [(spec.name, i, replica_shape(spec.options)) for i in range(count)]
    return demands


def plan(
    loaded: dict[str, LoadedConfig], nodes: int, gpus_per_node: int, cpus_per_node: float
) -> list[Placement]:
    """Place on ``nodes`` identical nodes (what ``--plan`` asks about)."""
    return plan_on(loaded, [Node(i, cpus_per_node, [1.0] * gpus_per_node) for i in range(nodes)])


def live_nodes() -> list[Node]:
    """The running Ray cluster's alive nodes and their CPUs and GPUs (logical GPUs count too)."""
    import ray

    alive = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return [
        Node(i, res.get("CPU", 0), [1.0] * int(res.get("GPU", 0))) for i, res in enumerate(alive)
    ]


def plan_on(loaded: dict[str, LoadedConfig], cluster: list[Node]) -> list[Placement]:
    placements = []
    for deployment, replica, shape in sorted(
        replica_demands(loaded), key=lambda d: (-d[2].gpus, -d[2].cpus)
    ):
        who = f"{deployment} replica {replica + 1} ({shape.gpus:g} GPU, {shape.cpus:g} CPU"
        who += (
            f", {len(shape.bundles)} bundles {shape.strategy})" if len(shape.bundles) > 1 else ")"
        )
        slots = _place_replica(cluster, shape, who)
        placements.append(Placement(deployment, replica + 1, slots, shape.cpus))
    return sorted(placements, key=lambda p: (p.node, p.gpu_ids, p.deployment, p.replica))


def _place_replica(
    cluster: list[Node], shape: ReplicaShape, who: str
) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Ray's placement-group strategies: STRICT_PACK one node, STRICT_SPREAD one node per bundle,
    PACK one node when possible, SPREAD different nodes when possible."""
    if shape.strategy in ("STRICT_PACK", "PACK"):
        fits = [
            (_leftover(trial), node.index, trial)
            for node in cluster
            if (trial := _try_bundles([copy.deepcopy(node)], shape.bundles)) is not None
        ]
        if fits:
            _, index, trial = min(fits, key=lambda f: (f[0], f[1]))
            cluster[index] = trial[0][0]
            return trial[1]
        if shape.strategy == "STRICT_PACK":
            largest = max(len(node.gpus) for node in cluster)
            if shape.gpus > largest:
                raise PlacementError(
                    f"{who}: needs {shape.gpus:g} GPUs on one node; nodes have {largest}"
                )
            where = "on any one node" if len(shape.bundles) > 1 else ""
            raise PlacementError(
                f"{who} does not fit{where and ' ' + where}; what is left: {_free(cluster)}"
            )
    trial = _try_bundles(
        copy.deepcopy(cluster),
        shape.bundles,
        distinct=shape.strategy == "STRICT_SPREAD",
        prefer_new=shape.strategy != "PACK",
    )
    if trial is None:
        raise PlacementError(f"{who} does not fit; what is left: {_free(cluster)}")
    cluster[:] = trial[0]
    return trial[1]


def _try_bundles(nodes: list[Node], bundles, distinct: bool = False, prefer_new: bool = False):
    """Place bundles one by one best-fit on ``nodes`` (mutated); None when one does not fit."""
    slots, used = [], set()
    for gpus, cpus in sorted(bundles, key=lambda b: (-b[0], -b[1])):
        candidates = [n for n in nodes if not (distinct and n.index in used)]
        options = [
            (prefer_new and node.index in used, *option, node)
            for node in candidates
            if (option := _fit(node, gpus, cpus)) is not None
        ]
        if not options:
            return None
        *_, gpu_ids, node = min(options, key=lambda o: (o[0], o[1], o[3].index))
        node.cpus -= cpus
        for gpu in gpu_ids:
            node.gpus[gpu] -= min(gpus, 1.0)
        slots.append((node.index, gpu_ids))
        used.add(node.index)
    return nodes, tuple(slots)


def _fit(node: Node, gpus: float, cpus: float) -> tuple[float, tuple[int, ...]] | None:
    """(room left after, GPU ids) for the best spot of one bundle on ``node``, or None."""
    if node.cpus + EPSILON < cpus:
        return None
    if 0 < gpus < 1:
        fits = [(free, gpu) for gpu, free in enumerate(node.gpus) if free + EPSILON >= gpus]
        if not fits:
            return None
        free, gpu = min(fits)  # the fullest GPU that still has room
        return free - gpus, (gpu,)
    if gpus >= 1:
        whole = [gpu for gpu, free in enumerate(node.gpus) if free >= 1 - EPSILON]
        return (len(whole) - gpus, tuple(whole[: int(gpus)])) if len(whole) >= gpus else None
    return node.cpus - cpus, ()


def _leftover(trial) -> float:
    nodes, _ = trial
    return sum(nodes[0].gpus) + nodes[0].cpus / 1000


def _free(cluster: list[Node]) -> str:
    return ", ".join(
        f"node {n.index}: {n.cpus:g} CPU, GPUs free {[round(g, 2) for g in n.gpus]}"
        for n in cluster
    )


def describe(placements: list[Placement]) -> str:
    rows = [("node", "gpus", "deployment", "replica", "cpus")]
    for p in placements:
        where = ";".join(f"{node}:{','.join(map(str, gpus)) or '-'}" for node, gpus in p.slots)
        nodes = ",".join(map(str, p.nodes))
        gpus = ",".join(map(str, p.gpu_ids)) if len(p.nodes) == 1 else where
        rows.append((nodes, gpus or "-", p.deployment, str(p.replica), f"{p.cpus:g}"))
    return format_table(rows)
