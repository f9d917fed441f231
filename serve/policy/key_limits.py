"""Requests and tokens per minute per API key, counted across every router and one-hop replica.

One Ray actor per platform (named after its router application) holds a sliding window of
each limited key's requests and tokens. A replica asks it before serving a request of a key
with a limit (429 with ``Retry-After`` when the key is over either), reserving the tokens the
request may spend, and settles the tokens it did spend (``serve/policy/metering.py`` counts
them) when it ends. Keys without limits never call the actor.

The actor saves its windows in Ray's key-value store (the GCS, where Serve keeps its own
checkpoints) after every change, one write at a time, and a restarted actor (killed, or its node
lost) reads them back: a key that spent its minute stays refused. What a restart loses is what
changed while the last write was in flight (milliseconds). The windows live as long as the Ray
cluster's GCS does (a head restarted with GCS fault tolerance keeps them).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import TypeGuard

import ray
from ray.exceptions import RayActorError
from ray.experimental import internal_kv

from configs.api_keys import APIKey
from serve.router.errors import APIError

logger = logging.getLogger("ray.serve")

WINDOW_S = 60.0
# By default a reservation its replica never settled (it died mid-answer, taking the count it had
# seen with it) is charged in full at this age: the most the request could have spent.
RESERVATION_TTL_S = 900.0
RESERVATION_SLACK_S = 60  # a reservation outlives its request's timeout by this much at most
# An actor whose node is being declared dead: a 503 instead of a hang. The first call of a
# process may wait for the actor's worker to start (seconds on a loaded node).
ACTOR_TIMEOUT_S, ACTOR_START_TIMEOUT_S = 10.0, 60.0
# The actor's name carries its version: a cluster upgraded in place keeps the old detached actor,
# whose methods differ.
ACTOR_VERSION = 4
SAVED_NAMESPACE = "platform-key-limits"  # the windows' namespace in Ray's key-value store


class SlidingWindow:
    """Each key's admitted requests and spent tokens over the last ``WINDOW_S``, and the tokens
    its running requests may still spend (reserved at admission, as OpenAI does: prompt +
    ``max_tokens``; settled on the real count when the request ends)."""

    # the wall clock: a window read back by a restarted actor, on any node, keeps its times
    def __init__(self, clock=time.time):
        self.clock = clock
        self.requests: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self.tokens: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(
            collections.deque
        )
        # key -> ticket -> (when it expires, tokens)
        self.reserved: dict[str, dict[int, tuple[float, int]]] = collections.defaultdict(dict)
        self.last_ticket = 0

    def saved(self) -> dict:
        """The windows as JSON can hold them (``restored`` reads them back)."""
        return {
            "requests": {k: list(times) for k, times in self.requests.items() if times},
            "tokens": {k: [list(t) for t in spent] for k, spent in self.tokens.items() if spent},
            "reserved": {
                k: [[ticket, *held] for ticket, held in tickets.items()]
                for k, tickets in self.reserved.items()
                if tickets
            },
            "last_ticket": self.last_ticket,
        }

    @classmethod
    def restored(cls, saved: dict, clock=time.time) -> SlidingWindow:
        """A window as ``saved`` left it (its tickets still settle; what aged out is pruned at
        the key's next request)."""
        window = cls(clock)
        for key, times in saved.get("requests", {}).items():
            window.requests[key].extend(times)
        for key, spent in saved.get("tokens", {}).items():
            window.tokens[key].extend((at, n) for at, n in spent)
        for key, tickets in saved.get("reserved", {}).items():
            window.reserved[key].update((t, (expires, n)) for t, expires, n in tickets)
        window.last_ticket = saved.get("last_ticket", 0)
        return window

    def admit(
        self,
        key: str,
        requests_per_minute: int | None,
        tokens_per_minute: int | None = None,
        reserve: int = 0,
        hold_s: float = RESERVATION_TTL_S,
        counted: bool = True,
    ) -> tuple[float, int]:
        """``(0, ticket)`` when a request is admitted: counted, its ``reserve`` tokens held under
        ``ticket`` (0: none held) until ``settle``, or ``hold_s`` at most (the request's longest
        life). Else ``(seconds until one would be, 0)``. ``counted`` False: tokens for a part of
        a request already admitted (a pipeline's step), checked and held but not a request.

        Tokens admit a request while the spent and reserved ones leave room for its reserve; a
        key with nothing spent or reserved admits one request whatever its reserve, so a limit
        below one answer's ``max_tokens`` still serves requests one at a time."""
        now = self.clock()
        requests, tokens = self._pruned(key, now)
        waits = []
        if counted and requests_per_minute and len(requests) >= requests_per_minute:
            waits.append(requests[0] + WINDOW_S - now)
        if tokens_per_minute:
            spent = [n for _, n in tokens]
            held = sum(n for _, n in self.reserved[key].values())
            if not _room(sum(spent) + held, reserve, tokens_per_minute):
                waits.append(self._token_wait(tokens, held, reserve, tokens_per_minute, now))
        if waits:
            return max(waits), 0
        if counted:
            requests.append(now)
        if not (tokens_per_minute and reserve > 0):
            return 0.0, 0
        self.last_ticket += 1
        ticket = self.last_ticket
        self.reserved[key][ticket] = (now + hold_s, reserve)
        return 0.0, ticket

    def settle(self, key: str, ticket: int, tokens: int) -> None:
        """A request's ``tokens`` spent (its reservation, if any, returned)."""
        self.reserved[key].pop(ticket, None)
        if tokens > 0:
            self.tokens[key].append((self.clock(), tokens))

    def _token_wait(self, tokens, held: int, reserve: int, limit: int, now: float) -> float:
        """Seconds until enough of the oldest spent tokens leave the window; 1 s when the running
        requests' reservations alone fill it (they settle as those requests end)."""
        used = sum(n for _, n in tokens) + held
        for spent_at, n in tokens:
            used -= n
            if _room(used, reserve, limit):
                return spent_at + WINDOW_S - now
        return 1.0

    def _pruned(self, key: str, now: float):
        requests, tokens, reserved = self.requests[key], self.tokens[key], self.reserved[key]
        while requests and requests[0] <= now - WINDOW_S:
            requests.popleft()
        while tokens and tokens[0][0] <= now - WINDOW_S:
            tokens.popleft()
        for ticket, (expires, held) in list(reserved.items()):
            if expires <= now:  # never settled: charged what it reserved, from now
                del reserved[ticket]
                tokens.append((now, held))
        return requests, tokens


def _room(used: int, reserve: int, limit: int) -> bool:
    return used < limit and (used == 0 or used + reserve <= limit)


# Async methods: Ray runs them one at a time on the actor's event loop (none awaits but
# ``saved``), so a check and its count are one step; a sync actor with max_concurrency runs them
# on a thread pool, where two checks pass before either counts and ``settle`` mutates a deque
# ``admit`` iterates. Restarted wherever Ray can place it when it or its node dies, with the
# windows it saved.
@ray.remote(num_cpus=0, max_restarts=-1)
class KeyLimitsActor:
    def __init__(self, saved_as: str):
        self.saved_as = saved_as
        stored = internal_kv._internal_kv_get(saved_as, namespace=SAVED_NAMESPACE)
        self.window = SlidingWindow.restored(json.loads(stored) if stored else {})
        self._changes = self._saved_changes = 0
        self._changed = asyncio.Event()
        self._saver: asyncio.Task | None = None

    async def admit(
        self,
        key: str,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        reserve: int,
        hold_s: float,
        counted: bool,
    ) -> tuple[float, int]:
        admitted = self.window.admit(
            key, requests_per_minute, tokens_per_minute, reserve, hold_s, counted
        )
        if admitted[0] == 0:
            self._save_soon()
        return admitted

    async def settle(self, key: str, ticket: int, tokens: int) -> None:
        self.window.settle(key, ticket, tokens)
        self._save_soon()

    async def saved(self) -> None:
        """Returns once every change made before the call is saved."""
        wanted = self._changes
        while self._saved_changes < wanted:
            await asyncio.sleep(0.01)

    def _save_soon(self) -> None:
        self._changes += 1
        self._changed.set()
        if self._saver is None:
            self._saver = asyncio.get_running_loop().create_task(self._save_changes())

    async def _save_changes(self) -> None:
        """Writes the windows after each change, one write at a time (changes made while one is
        in flight go in the next): a request never waits on the store."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            changes, state = self._changes, json.dumps(self.window.saved())
            try:
                await asyncio.to_thread(
                    internal_kv._internal_kv_put, self.saved_as, state, namespace=SAVED_NAMESPACE
                )
            except Exception:  # the GCS unreachable for now: the limits still apply; retried
                logger.exception("the per-key limits could not be saved; retrying in 1 s")
                await asyncio.sleep(1)
                self._changed.set()
                continue
            self._saved_changes = changes


class KeyLimits:
    """A replica's view of its platform's limits actor (created by whichever replica asks first)."""

    def __init__(self, platform_app: str):
        self.actor_name = f"{platform_app}:key-limits-v{ACTOR_VERSION}"
        self._actor = None

    async def admit(
        self, key: APIKey | None, reserve_tokens: int = 0, hold_s: float = RESERVATION_TTL_S
    ) -> Callable[[int], None] | None:
        """A 429 with ``Retry-After`` when ``key`` is over its requests or tokens for this minute
        (``reserve_tokens``: what the request may spend, held ``hold_s`` at most); else what
        charges the tokens the request spent when it ends, to be called once (the policy's
        ``MeteredAnswer.settle`` does); None: the key's tokens are not counted."""
        if key is None or not (key.requests_per_minute or key.tokens_per_minute):
            return None
        return await self._checked(key, reserve_tokens, hold_s, counted=True)

    async def reserve(
        self, key: APIKey | None, tokens: int, hold_s: float = RESERVATION_TTL_S
    ) -> Callable[[int], None] | None:
        """``tokens`` for a part of a request ``admit`` already counted (a pipeline's step, which
        only then knows its prompt and ``max_tokens``), held as ``admit`` holds a request's: a 429
        when the key's spent and reserved tokens leave no room, else what settles the step's real
        count. None: the key's tokens are not counted."""
        if not meters_tokens(key):
            return None
        return await self._checked(key, tokens, hold_s, counted=False)

    async def _checked(
        self, key: APIKey, reserve: int, hold_s: float, counted: bool
    ) -> Callable[[int], None] | None:
        wait_s, ticket = await self._admit(key, reserve, hold_s, counted)
        if wait_s > 0:
            raise APIError(
                429,
                f"this API key ({key.name}) is over its per-minute limit; retry after the "
                "Retry-After header's seconds",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait_s + 0.5)))},
            )
        return functools.partial(self.settle, key, ticket) if meters_tokens(key) else None

    def settle(self, key: APIKey, ticket: int, tokens: int) -> None:
        """Count ``tokens`` against ``key`` and return the reservation ``ticket`` (0: none); not
        awaited: the answer is already on its way."""
        if key.tokens_per_minute:
            self._limits_actor().settle.remote(key.name, ticket, tokens)

    async def _admit(
        self, key: APIKey, reserve: int, hold_s: float, counted: bool
    ) -> tuple[float, int]:
        for _ in range(2):
            timeout_s = ACTOR_START_TIMEOUT_S if self._actor is None else ACTOR_TIMEOUT_S
            try:
                call = self._limits_actor().admit.remote(
                    key.name,
                    key.requests_per_minute,
                    key.tokens_per_minute,
                    reserve,
                    hold_s,
                    counted,
                )
                return await asyncio.wait_for(call, timeout_s)
            except RayActorError:  # gone for good (killed, say): found again, or started anew
                self._actor = None
            except TimeoutError:  # restarting, or its node is being declared dead
                break
        raise APIError(
            503,
            "the per-key limits cannot be checked right now; retry shortly",
            code="limits_unavailable",
            headers={"Retry-After": "1"},
        )

    def _limits_actor(self):
        if self._actor is None:
            from ray.serve._private.constants import SERVE_NAMESPACE

            # ray.remote makes the class an actor class; mypy sees the plain class
            self._actor = KeyLimitsActor.options(  # type: ignore[attr-defined]
                name=self.actor_name,
                namespace=SERVE_NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
            ).remote(self.actor_name)
        return self._actor


def meters_tokens(key: APIKey | None) -> TypeGuard[APIKey]:
    return key is not None and bool(key.tokens_per_minute)
