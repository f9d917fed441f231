"""Refuse at once, instead of queueing, requests to a model that has no running replica.

When the only replica of a model dies, Ray Serve's router holds the model's requests (new
ones, and ones it was about to send to the dead replica) until a replacement is running: tens
of seconds for a vLLM engine, during which clients hang. A load balancer in front of the
platform would rather have a 503 with ``Retry-After`` and try elsewhere. Serve's router in
this process knows its routable replicas; it has no public accessor, so it is read
defensively (unknown: nothing is refused), and an integration test pins it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ray.serve.handle import DeploymentHandle

POLL_S = 0.1


def _running_replicas(handle: DeploymentHandle) -> dict | None:
    """Serve's router's replicas of ``handle`` in this process (by id); None before it has heard
    of any, or where Serve's internals differ."""
    router = getattr(handle, "_router", None)
    if router is None or not handle.running_replicas_populated():
        return None
    request_router = getattr(getattr(router, "_asyncio_router", None), "_request_router", None)
    replicas = getattr(request_router, "curr_replicas", None)
    return replicas if isinstance(replicas, dict) else None


def routable_replicas(handle: DeploymentHandle) -> int | None:
    """How many replicas Serve's router in this process can send ``handle``'s requests to (it
    drops a dead one at its first failed request, before the controller says so); None before
    it has heard of any replica, or where Serve's internals differ."""
    replicas = _running_replicas(handle)
    return None if replicas is None else len(replicas)


def replica_actors(handle: DeploymentHandle) -> list[Any] | None:
    """The actors of ``handle``'s routable replicas, to call outside the deployment's request
    queue (as Serve's controller calls them for health checks and routing stats); None where
    unknown (as ``routable_replicas``)."""
    replicas = _running_replicas(handle)
    if replicas is None:
        return None
    actors = [getattr(replica, "_actor_handle", None) for replica in replicas.values()]
    return None if None in actors else actors


class NoReplica(Exception):
    """The deployment has no running replica."""


class ReplicaWatch:
    """One deployment's requests waiting for their (first) answer, refused together when its
    last replica is gone. Polled only while some request waits: one task per deployment."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        self.waiting = 0
        self.lost = asyncio.Event()
        self._poller: asyncio.Task | None = None

    async def answer(self, awaitable: Awaitable[Any]) -> Any:
        """``awaitable``'s result; ``NoReplica`` (``awaitable`` cancelled) if the last replica
        goes first."""
        work = asyncio.ensure_future(awaitable)
        self._update()  # none now: refused at once
        lost = asyncio.ensure_future(self.lost.wait())
        self.waiting += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            raise NoReplica
        finally:
            self.waiting -= 1
            lost.cancel()
            work.cancel()  # no-op once done; else the caller left, or the replicas did

    def _update(self) -> None:
        if routable_replicas(self.handle) == 0:
            self.lost.set()
        else:
            self.lost.clear()

    async def _poll(self) -> None:
        while self.waiting:
            self._update()
            await asyncio.sleep(POLL_S)
