"""Requests and tokens per minute per API key, counted across every router and one-hop replica.

One Ray actor per platform (named after its router application) holds a sliding window of
each limited key's requests and tokens. A replica asks it before serving a request of a key
with a limit (429 with ``Retry-After`` when the key is over either), and reports the tokens a
request used (``usage.total_tokens``) when it ends; a stream is asked to carry its usage, and
that extra event is dropped when the client had not asked for it. Keys without limits never
call the actor.
"""

from __future__ import annotations

import collections
import functools
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import ray
from ray.exceptions import RayActorError

from configs.api_keys import APIKey
from serve.router.errors import APIError

WINDOW_S = 60.0


class SlidingWindow:
    """Each key's admitted requests and spent tokens over the last ``WINDOW_S``."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.requests: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self.tokens: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(
            collections.deque
        )

    def admit(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None = None
    ) -> float:
        """0 when a request is admitted (and counted), else the seconds until one would be."""
        now = self.clock()
        requests, tokens = self._pruned(key, now)
        waits = []
        if requests_per_minute and len(requests) >= requests_per_minute:
            waits.append(requests[0] + WINDOW_S - now)
        used = sum(n for _, n in tokens)
        if tokens_per_minute and used >= tokens_per_minute:
            for spent_at, n in tokens:  # wait until enough of the oldest tokens leave the window
                used -= n
                if used < tokens_per_minute:
                    waits.append(spent_at + WINDOW_S - now)
                    break
        if waits:
            return max(waits)
        requests.append(now)
        return 0.0

    def spend(self, key: str, tokens: int) -> None:
        if tokens > 0:
            self.tokens[key].append((self.clock(), tokens))

    def _pruned(self, key: str, now: float):
        requests, tokens = self.requests[key], self.tokens[key]
        while requests and requests[0] <= now - WINDOW_S:
            requests.popleft()
        while tokens and tokens[0][0] <= now - WINDOW_S:
            tokens.popleft()
        return requests, tokens


# Async methods: Ray runs them one at a time on the actor's event loop (none awaits), so a check
# and its count are one step; a sync actor with max_concurrency runs them on a thread pool, where
# two checks pass before either counts and ``spend`` mutates a deque ``admit`` iterates. Restarted
# wherever Ray can place it when it or its node dies (its windows start empty again).
@ray.remote(num_cpus=0, max_restarts=-1)
class KeyLimitsActor:
    def __init__(self):
        self.window = SlidingWindow()

    async def admit(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None
    ) -> float:
        return self.window.admit(key, requests_per_minute, tokens_per_minute)

    async def spend(self, key: str, tokens: int) -> None:
        self.window.spend(key, tokens)


class KeyLimits:
    """A replica's view of its platform's limits actor (created by whichever replica asks first)."""

    def __init__(self, platform_app: str):
        self.actor_name = f"{platform_app}:key-limits"
        self._actor = None

    async def check(self, key: APIKey | None) -> None:
        """A 429 with ``Retry-After`` when ``key`` is over its requests or tokens for this
        minute."""
        if key is None or not (key.requests_per_minute or key.tokens_per_minute):
            return
        wait_s = await self._admit(key)
        if wait_s > 0:
            raise APIError(
                429,
                f"this API key ({key.name}) is over its per-minute limit; retry after the "
                "Retry-After header's seconds",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait_s + 0.5)))},
            )

    def spend(self, key: APIKey, tokens: int) -> None:
        """Count ``tokens`` against ``key`` (not awaited: the answer is already on its way)."""
        if key.tokens_per_minute and tokens > 0:
            self._limits_actor().spend.remote(key.name, tokens)

    async def _admit(self, key: APIKey) -> float:
        for _ in range(2):
            try:
                return await self._limits_actor().admit.remote(
                    key.name, key.requests_per_minute, key.tokens_per_minute
                )
            except RayActorError:  # gone for good (killed, say): found again, or started anew
                self._actor = None
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
            ).remote()
        return self._actor


def meters_tokens(key: APIKey | None) -> TypeGuard[APIKey]:
    return key is not None and bool(key.tokens_per_minute)


def spender(limits: KeyLimits | None, key: APIKey | None) -> Callable[[int], None] | None:
    """What charges an answer's tokens to ``key``; None when no limit counts them."""
    if limits is None or not meters_tokens(key):
        return None
    return functools.partial(limits.spend, key)


@dataclass(frozen=True)
class UsageAsked:
    """What usage the client itself asked a stream for: the final event, and usage on every
    chunk."""

    final: bool = False
    continuous: bool = False


def ask_for_usage(body: dict[str, Any]) -> UsageAsked:
    """Make a streamed request carry its usage on every chunk and at its end (vLLM's
    ``continuous_usage_stats``), so a stream that ends early is charged what it generated; what
    the client had asked for itself."""
    options = body.get("stream_options")
    if not isinstance(options, dict):
        options = {}
    asked = UsageAsked(
        bool(options.get("include_usage")), bool(options.get("continuous_usage_stats"))
    )
    body["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
    return asked


USAGE_HEADER = "metadata"  # vLLM's embeddings as raw bytes carry their ids and usage in this header


def ask_for_usage_header(body: dict[str, Any]) -> bool:
    """Make embeddings asked as raw bytes carry the usage header (``bytes``; ``bytes_only`` has
    none); whether the client wanted the header itself."""
    if body.get("encoding_format") != "bytes_only":
        return True
    body["encoding_format"] = "bytes"
    return False


def response_tokens(content: bytes, usage_header: str | bytes | None = None) -> int:
    """``usage.total_tokens`` of a JSON answer, or of the usage header of a raw-bytes one (0 when
    neither has it)."""
    for text in (content, usage_header):
        if text is None:
            continue
        try:
            usage = json.loads(text).get("usage") or {}
        except (TypeError, ValueError, AttributeError):
            continue
        return int(usage.get("total_tokens") or 0)
    return 0


class StreamMeter:
    """Counts a server-sent event stream's tokens from the usage on its chunks (the last count
    seen is what the stream generated, however it ends), and takes out the usage the client did
    not ask for."""

    def __init__(self, asked: UsageAsked):
        self.asked = asked
        self.tokens = 0
        self._partial = ""

    def feed(self, text: str) -> str:
        """``text`` (whole events, or the rest of one) without the usage not asked for."""
        *events, self._partial = (self._partial + text).split("\n\n")
        kept = (self._kept(event) for event in events)
        return "".join(event + "\n\n" for event in kept if event is not None)

    def flush(self) -> str:
        """What is left of an event the stream did not finish with a blank line."""
        rest, self._partial = self._partial, ""
        return (self._kept(rest) or "") if rest else ""

    def _kept(self, event: str) -> str | None:
        """The event as the client gets it; None to drop it."""
        data = event.removeprefix("data: ")
        if '"usage"' not in data:
            return event
        try:
            chunk = json.loads(data)
        except ValueError:
            return event
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if not usage:
            return event
        self.tokens = int(usage.get("total_tokens") or 0)
        if not chunk.get("choices"):  # the usage event that ends the stream
            return event if self.asked.final else None
        if self.asked.continuous:
            return event
        if self.asked.final:
            chunk["usage"] = None  # as vLLM sends a chunk when only the final usage was asked
        else:
            del chunk["usage"]
        return "data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


async def metered(
    chunks: AsyncGenerator, meter: StreamMeter, spend: Callable[[int], None]
) -> AsyncGenerator:
    """Relay ``chunks`` (strings and early engine responses) through ``meter``; report the tokens
    at the end."""
    try:
        async for chunk in chunks:
            if isinstance(chunk, str):
                chunk = meter.feed(chunk)
                if not chunk:
                    continue
            yield chunk
        if rest := meter.flush():
            yield rest
    finally:
        spend(meter.tokens)
        await chunks.aclose()
