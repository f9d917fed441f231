"""Serve's controller, asked from a replica's event loop without ever blocking it.

``ray.get_actor`` is a blocking call to the GCS; while the head is down (a lost head, GCS fault
tolerance) it retries for up to a minute, and called on the event loop it stalls every request of
the replica, those that never need the controller included. The handle is looked up once, on a
thread, and kept: the controller is a detached actor that Ray restarts under the same id, so the
handle stays valid across its restarts and a head's.
"""

from __future__ import annotations

import asyncio
from typing import Any

LOOKUP_TIMEOUT_S = 30.0  # once per process, at its start: a loaded controller answers in seconds
CONTROLLER_TIMEOUT_S = 5.0  # a call to it: longer means it is restarting, or the head is down

_handle: Any = None
_lookup: asyncio.Future | None = None


async def serve_controller(timeout_s: float = LOOKUP_TIMEOUT_S) -> Any:
    """The controller's actor handle; ``TimeoutError`` while the GCS cannot name it (a lookup
    still running carries on and serves the next call)."""
    global _handle, _lookup
    if _handle is not None:
        return _handle
    if _lookup is None or _lookup.done():
        _lookup = asyncio.ensure_future(asyncio.to_thread(_get_controller))
    _handle = await asyncio.wait_for(asyncio.shield(_lookup), timeout_s)
    return _handle


def _get_controller() -> Any:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
