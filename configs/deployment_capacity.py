"""What an engine deployment takes in at once (running + queued), counted where requests come in:
a router process calls it through a Serve handle, which queues ``max_queued_requests`` per
calling process in front of all the replicas' running slots; a replica's own HTTP port (the
one-hop path) runs its ``max_ongoing_requests`` and queues ``max_queued_requests`` of that port's
requests itself. The request policy refuses past it (``serve/policy/capacity.py``)."""

from __future__ import annotations

from typing import Any, Literal

from common.serve_options import replica_range
from configs import LoadedConfig

SERVE_DEFAULT_MAX_ONGOING_REQUESTS = 5  # Serve's own default, when the options name none


def router_limit(options: dict[str, Any], routers: int = 1) -> int | None:
    """What one router process may have in flight to a deployment with these Serve options
    (``DeploymentSpec.options``): the replicas' running slots at the most replicas it runs
    (``num_replicas``, or ``autoscaling_config.max_replicas``), shared by ``routers`` router
    replicas, plus the queue Serve's handle keeps in this process (``max_queued_requests``; -1 or
    none: unbounded, so no limit)."""
    queued = options.get("max_queued_requests", -1)
    if queued == -1:
        return None
    running = options.get("max_ongoing_requests", SERVE_DEFAULT_MAX_ONGOING_REQUESTS)
    running *= replica_range(options)[1]
    return -(-running // max(routers, 1)) + queued  # the running slots rounded up per router


def replica_limit(options: dict[str, Any]) -> int | None:
    """What one replica's own HTTP port (the one-hop path) may have in flight: its
    ``max_ongoing_requests`` running plus the ``max_queued_requests`` Serve queues there
    (-1 or none: no limit)."""
    queued = options.get("max_queued_requests", -1)
    if queued == -1:
        return None
    return options.get("max_ongoing_requests", SERVE_DEFAULT_MAX_ONGOING_REQUESTS) + queued


def deployment_limits(
    config: LoadedConfig, where: Literal["router", "replica"], routers: int = 1
) -> dict[str, int | None]:
    """Each engine deployment's limit (by deployment name, ``ModelRoute.deployment_name``) from
    the options it is deployed with: a group's shared deployment counts once for all its
    models, and a model's variants share their model's."""
    return {
        spec.name: router_limit(spec.options, routers)
        if where == "router"
        else replica_limit(spec.options)
        for spec in config.deployments()
    }
