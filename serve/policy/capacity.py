"""How many requests of one engine deployment a process takes in at once, and a refusal at once
for the next.

A deployment runs ``max_ongoing_requests`` per replica and Serve queues ``max_queued_requests``
more; what comes beyond that is refused with a 503. Serve refuses only where the request reaches
its queue, behind everything the process does first (reading the body, the key's limits, media),
and under load that took seconds (issue 32). ``Capacity`` counts the requests a process has
taken in for one deployment and refuses the next before any of that, at once, with the same
503 and ``Retry-After`` the router gives for Serve's own refusal. Every request to a model takes
its slot through ``DeploymentCapacities.admit``: the request policy's for the JSON endpoints, the
router's app for the routes that read their own bodies (audio uploads, ``/v2`` inference).

The limit depends on where it is counted, a router process or a replica's own port
(``configs/deployment_capacity.py``); each route carries both (``ModelRoute``).

Pure and lock-free: ``acquire`` neither awaits nor blocks, so on one event loop (a Serve
replica's) a check and its count are one step.

HAProxy in front refuses the same requests sooner, before any hop (``common/haproxy_gate.py``):
``GatePublisher`` hands it the limits this process counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from starlette.types import Message, Send

from common import haproxy_gate
from serve.router.errors import APIError
from serve.router.routing import ModelRoute

logger = logging.getLogger("ray.serve")

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


class Slot:
    """One request's place in a ``Capacity``, taken at once or refused with the 503, and given
    back once: when the request ends, or sooner, when its answer's last byte goes out
    (``freed_by_last_byte``). HAProxy's gate counts a request out when that byte passes it and
    lets the next one in, which must find the place free here, not still held by a request
    whose clean-up has yet to run on a busy event loop."""

    def __init__(self, capacity: Capacity):
        capacity.acquire()
        self._capacity: Capacity | None = capacity

    def release(self) -> None:
        capacity, self._capacity = self._capacity, None
        if capacity is not None:
            capacity.release()

    def freed_by_last_byte(self, send: Send) -> Send:
        """``send`` that gives the place back as the answer's last message goes out."""

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.release()
            await send(message)

        return sent


class DeploymentCapacities:
    """This process's ``Capacity`` of each engine deployment, made at its first use. The request
    policy admits requests against it; the router's readiness probe takes a slot only when one
    is free (``ServeEngineCaller``), because a probe waits in Serve's queue like a request and,
    in a deployment of one or two slots, would cost a user's request its place."""

    def __init__(self) -> None:
        self._by_deployment: dict[tuple[str | None, str], Capacity] = {}

    def of(self, route: ModelRoute, limit: int | None) -> Capacity | None:
        """``route``'s deployment's capacity at ``limit`` (None: unbounded, nothing counted).
        An edit may change the limit: the requests in flight count against the new one."""
        if limit is None:
            return None
        key = (route.app_name, route.deployment_name)
        capacity = self._by_deployment.get(key)
        if capacity is None:
            capacity = self._by_deployment[key] = Capacity(limit, route.deployment_name)
        capacity.limit = limit
        return capacity

    @contextmanager
    def admit(self, route: ModelRoute, own_url: bool) -> Iterator[Slot | None]:
        """A slot of ``route``'s deployment for the block (None: unbounded), or its 503 at once:
        every request to a model holds one, whoever reads its body (the request policy, or the
        app for an upload or a ``/v2`` inference). ``own_url``: counted on the model's own URL (a
        replica's port, its ``replica_capacity``), else in a router process
        (``router_capacity``)."""
        capacity = self.of(route, route.replica_capacity if own_url else route.router_capacity)
        if capacity is None:
            yield None
            return
        slot = Slot(capacity)
        try:
            yield slot
        finally:
            slot.release()

    def values(self) -> Collection[Capacity]:
        return self._by_deployment.values()


def ingress_gate(
    routes: Mapping[str, ModelRoute], own_model: str | None, endpoints: Collection[str]
) -> dict[str, Any]:
    """What HAProxy is to refuse itself in front of this process (``haproxy_gate.publish``): on a
    replica's own URL (``own_model``), its deployment's capacity per replica; on the router, each
    deployment's per router process, named by its models (variants too) in the bodies of
    ``endpoints``. Empty where nothing is bounded."""
    if own_model is not None:
        route = routes.get(own_model)
        if route is None or route.replica_capacity is None:
            return {}
        return {
            "direct": {"deployment": route.deployment_name, "per_server": route.replica_capacity}
        }
    bounded = {name: r for name, r in routes.items() if r.router_capacity is not None}
    if not bounded:
        return {}
    return {
        "router": {
            "models": {name: r.deployment_name for name, r in bounded.items()},
            "limits": {r.deployment_name: r.router_capacity for r in bounded.values()},
            "endpoints": sorted(endpoints),
        }
    }


class GatePublisher:
    """Keeps this process's ``ingress_gate`` where HAProxy reads it, checked at most every
    ``CHECK_S`` (the router's routes change in place as model applications come and go).
    ``app``: the Serve application this process serves, whose HAProxy backend is gated; None
    (outside Serve): nothing is published."""

    CHECK_S = 2.0

    def __init__(self, app: str | None, own_model: str | None, endpoints: Collection[str]):
        self.app, self.own_model, self.endpoints = app, own_model, endpoints
        self._published: dict[str, Any] | None = None
        self._next_check = 0.0

    def check(self, routes: Mapping[str, ModelRoute]) -> None:
        if self.app is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.CHECK_S
        gate = ingress_gate(routes, self.own_model, self.endpoints)
        if gate == self._published:
            return
        self._published = gate
        try:
            haproxy_gate.publish(self.app, gate, RETRY_AFTER_S)
        except OSError as err:  # HAProxy then leaves the refusals to this process, as before
            logger.warning("could not publish %s's capacity to HAProxy: %s", self.app, err)


def serve_app() -> str | None:
    """The Serve application of this replica; None outside one."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().app_name
    except RayServeException:
        return None
