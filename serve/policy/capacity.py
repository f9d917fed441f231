"""How many requests of one engine deployment a process takes in at once, and a refusal at once
for the next.

A deployment runs ``max_ongoing_requests`` per replica and Serve queues ``max_queued_requests``
more; what comes beyond that is refused with a 503. Serve refuses only where the request reaches
its queue, behind everything the process does first (reading the body, the key's limits, media),
and under load that took seconds (issue 32). ``Capacity`` counts the requests a process has
taken in for one deployment and refuses the next before any of that, at once, with the same
503 and ``Retry-After`` the router gives for Serve's own refusal.

The limit depends on where it is counted (``router_limit``, ``replica_limit``): a router calls
the deployment through a Serve handle, which queues ``max_queued_requests`` per calling process
in front of all the replicas' running slots; a replica's own HTTP port (the one-hop path) runs
its ``max_ongoing_requests`` and queues ``max_queued_requests`` of that port's requests itself.

Pure and lock-free: ``acquire`` neither awaits nor blocks, so on one event loop (a Serve
replica's) a check and its count are one step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from common.serve_options import replica_range
from configs import LoadedConfig
from serve.router.errors import APIError

SERVE_DEFAULT_MAX_ONGOING_REQUESTS = 5  # Serve's own default, when the options name none
RETRY_AFTER_S = 1  # as the router's answer to Serve's BackPressureError


class Capacity:
    """In-flight requests of one deployment in this process, at most ``limit`` (None: no limit).

    ``with capacity.admit(): ...`` holds a slot for the block (a streamed answer included: hold
    it until the last byte is sent) or raises the 503 at once; ``acquire``/``release`` do the
    same in two steps. ``limit`` may be changed while requests are in flight (a redeploy with
    other options): the requests already in count against the new one."""

    def __init__(
        self, limit: int | None, name: str = "the model", retry_after_s: int = RETRY_AFTER_S
    ):
        self.limit = limit
        self.name = name  # in the refusal's message: the deployment (or model) at capacity
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"a capacity's limit is at least 1 (None: no limit), not {value}")
        self._limit = value

    @property
    def full(self) -> bool:
        return self._limit is not None and self.in_flight >= self._limit

    def acquire(self) -> None:
        """Count one more request in, or raise the 503 (``refusal``) when all slots are taken."""
        if self.full:
            raise self.refusal()
        self.in_flight += 1

    def release(self) -> None:
        """The request ``acquire`` let in is done (answered, failed, or its client left)."""
        if self.in_flight <= 0:
            raise RuntimeError(f"{self.name}: release() without a matching acquire()")
        self.in_flight -= 1

    @contextmanager
    def admit(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def refusal(self) -> APIError:
        return APIError(
            503,
            f"{self.name} is at capacity; retry shortly",
            code="server_busy",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    def __repr__(self) -> str:
        return f"Capacity({self.name!r}, {self.in_flight}/{self._limit})"


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
