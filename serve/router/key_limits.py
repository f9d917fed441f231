"""Requests per minute per API key, counted across every router replica and one-hop replica.

One Ray actor per platform (named after its router application) holds a sliding window of
admitted requests per key; each replica asks it before serving a request of a key that has a
``requests_per_minute``. Keys without a limit never call it.
"""

from __future__ import annotations

import collections
import time

import ray

from configs.api_keys import APIKey
from serve.router.errors import APIError

WINDOW_S = 60.0


class SlidingWindow:
    """Admitted request times per key over the last ``WINDOW_S``."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.admitted: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def admit(self, key: str, per_minute: int) -> float:
        """0 when the request is admitted (and counted), else the seconds until one would be."""
        now = self.clock()
        times = self.admitted[key]
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if len(times) >= per_minute:
            return times[0] + WINDOW_S - now
        times.append(now)
        return 0.0


@ray.remote(num_cpus=0, max_concurrency=1000)
class KeyLimitsActor:
    def __init__(self):
        self.window = SlidingWindow()

    def admit(self, key: str, per_minute: int) -> float:
        return self.window.admit(key, per_minute)


class KeyLimits:
    """A replica's view of its platform's limits actor (created by whichever replica asks first)."""

    def __init__(self, platform_app: str):
        self.actor_name = f"{platform_app}:key-limits"
        self._actor = None

    async def check(self, key: APIKey | None) -> None:
        """A 429 with ``Retry-After`` when ``key`` has used its requests for this minute."""
        if key is None or not key.requests_per_minute:
            return
        wait_s = await self._admit(key)
        if wait_s > 0:
            raise APIError(429, f"this API key ({key.name}) is over its {key.requests_per_minute} requests "
                                "per minute; retry after the Retry-After header's seconds",
                           code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait_s + 0.5)))})

    async def _admit(self, key: APIKey) -> float:
        if self._actor is None:
            from ray.serve._private.constants import SERVE_NAMESPACE

            self._actor = KeyLimitsActor.options(name=self.actor_name, namespace=SERVE_NAMESPACE,
                                                 get_if_exists=True, lifetime="detached").remote()
        return await self._actor.admit.remote(key.name, key.requests_per_minute)
