"""Routing by prompt prefix (``routing: prefix_affinity``): Ray Serve LLM's request router on the
platform's engine deployments, on both paths.

Ray's ``PrefixCacheAffinityRouter`` keeps a prefix tree of the prompts each replica took and sends
a request to the replica with the longest match, while the replicas' queues differ by at most its
``imbalanced_threshold`` (else Serve's pick of two); it drops a replica that dies or leaves from
the tree. It reads the prompt from an argument with a ``messages`` or ``prompt`` attribute (Ray
Serve LLM's request models), where the platform passes the request body as a dict (the router's
``EngineDeployment.handle(model_id, capability, body, request_id)``, the ``VariantRouter``'s
``choose_replica(body)``): reading that dict is the first thing this adds.

The second: the one-hop path's pick-only calls (``choose_replica(body, _reserve=False,
pick_only=True)``, the request itself goes through HAProxy). For those Serve takes the first
replica of the first rank as it is, probes no queue and never calls ``on_request_routed``, where
Ray's router records the prompt: here the shorter queue of the rank is chosen and the prompt
recorded for it; the replicas' queues are probed for each pick (Serve's cache of them is kept by
its dispatch, which these calls skip). And a replica's queue counts a request only once HAProxy
has forwarded it: a burst of picks would see the same queues, so each pick counts on its
replica's queue for ``PICK_SETTLE_S`` too.

The third: each decision counted (``platform_routing_decisions``, by model, path and decision).

Imported from Ray's private module (read from Ray 2.60): the public
``ray.serve.llm.request_router`` imports vLLM and torch first (15 s and hundreds of MB in every
process that holds a handle to the model, the shared router's included).
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter, deque
from enum import StrEnum
from typing import Any

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve._private.common import ReplicaID
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve.config import RequestRouterConfig

from configs.routing_models import RoutingConfig
from serve.deployments.variant_router import PICK_ONLY

PROMPT_FIELDS = ("messages", "prompt")  # chat completions, completions
# How long a pick-only request counts on its replica's queue beside the replica's own count: the
# time HAProxy takes to forward it (milliseconds), with room (it counts twice meanwhile: load wins
# sooner). No longer: a short request done before the next one is sent still counts for this
# long, and a client's requests sent one after another (an agent's loop) would pile up as a
# phantom queue on their replica until load sent them away from their prefix (at 1 s, six requests
# of one prefix split 3 and 3 in tests/integration/test_prefix_routing.py; at 0.25 s, 4 and 2).
PICK_SETTLE_S = 0.05


class RoutingDecision(StrEnum):
    AFFINITY = "affinity"  # to a replica that took a prefix of the prompt
    NEW_PREFIX = "new_prefix"  # no replica took enough of it: the one holding the fewest prefixes
    LOAD = "load"  # the queues differ by more than the bound: Serve's pick, affinity ignored
    NO_PROMPT = "no_prompt"  # nothing to match (an embedding's input, token ids): Serve's pick


def decision(has_prompt: bool, chosen: bool, placed_new: bool) -> RoutingDecision:
    """What Ray's ``_prefix_match_best_replicas`` did: whether the request had a prompt, whether
    it chose replicas (none: load won), and whether it asked the tree for its smallest tenants
    (the match fell short)."""
    if not has_prompt:
        return RoutingDecision.NO_PROMPT
    if not chosen:
        return RoutingDecision.LOAD
    return RoutingDecision.NEW_PREFIX if placed_new else RoutingDecision.AFFINITY


@functools.cache
def decisions_counter() -> Any:
    """Created once per process (Ray registers each metric by name)."""
    from ray.util.metrics import Counter

    return Counter(
        "platform_routing_decisions",
        "Requests routed by prefix, by model, path (router: /v1, direct: the model's own URL) "
        "and decision (affinity, new_prefix, load, no_prompt).",
        tag_keys=("model", "path", "decision"),
    )


class _TreeCalls:
    """Ray's prefix-tree actor handle, noting whether the last match fell back to the smallest
    tenants (Ray's router keeps no record of its branch). Both calls come in one stretch with no
    await between them, so concurrent routings cannot interleave their notes."""

    def __init__(self, actor: Any):
        self.actor, self.placed_new = actor, False

    def __getattr__(self, name: str) -> Any:
        if name == "prefix_match":
            self.placed_new = False
        elif name == "get_smallest_tenants":
            self.placed_new = True
        return getattr(self.actor, name)


class UnseenPicks:
    """The pick-only requests of the last ``PICK_SETTLE_S``, by replica: on their way through
    HAProxy, perhaps not yet in the replica's own queue."""

    def __init__(self, settle_s: float = PICK_SETTLE_S):
        self.settle_s, self.picks = settle_s, deque[tuple[float, ReplicaID]]()

    def add(self, replica_id: ReplicaID, now: float) -> None:
        self.picks.append((now, replica_id))

    def by_replica(self, now: float) -> Counter[ReplicaID]:
        while self.picks and self.picks[0][0] < now - self.settle_s:
            self.picks.popleft()
        return Counter(replica_id for _, replica_id in self.picks)


class PrefixAffinityRouter(PrefixCacheAffinityRouter):
    """``PrefixCacheAffinityRouter`` reading the prompt from the request body the platform
    passes, choosing and recording for pick-only calls, counting its decisions; a call without a
    prompt (no body, an embedding's input, token ids only) gets Serve's pick."""

    def initialize_state(self, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        self._tree_calls = _TreeCalls(self._tree_actor)  # type: ignore[has-type]
        self._tree_actor = self._tree_calls
        self._unseen_picks = UnseenPicks()

    def _extract_text_from_request(self, pending_request: PendingRequest) -> str | None:
        """The prompt of the first request body among the call's arguments as one string, or
        None where there is none to match (Ray's router divides by its length)."""
        for arg in pending_request.args:
            if isinstance(arg, dict):
                for field in PROMPT_FIELDS:
                    if field in arg:
                        return self._normalize_prompt_to_string(arg[field]) or None
        return None

    async def _prefix_match_best_replicas(
        self, pending_request: PendingRequest | None, candidate_replicas: list[RunningReplica]
    ) -> list[list[RunningReplica]]:
        ranks = await super()._prefix_match_best_replicas(pending_request, candidate_replicas)
        # No await since Ray's tree calls: the note is this request's.
        pick_only = _pick_only(pending_request)
        if pending_request is None or not (pending_request.args or pick_only):
            return ranks  # a call without a request (the replicas' stats): no decision to count
        has_prompt = bool(pending_request.args and self._extract_text_from_request(pending_request))
        made = decision(has_prompt, bool(ranks[0]), self._tree_calls.placed_new)
        decisions_counter().inc(
            tags={
                "model": self._deployment_id.name,
                "path": "direct" if pick_only else "router",
                "decision": made.value,
            }
        )
        return ranks

    async def _probe_queue_lens(
        self, replicas: list[RunningReplica], backoff_index: int
    ) -> list[tuple[RunningReplica, int | None]]:
        """Each replica's queue as it reports it, with the picks it may not have seen yet."""
        probed = await super()._probe_queue_lens(replicas, backoff_index)
        unseen = self._unseen_picks.by_replica(time.monotonic())
        return [(r, None if n is None else n + unseen[r.replica_id]) for r, n in probed]

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not _pick_only(pending_request):
            return await super().choose_replicas(candidate_replicas, pending_request)
        # Serve's cache of queue lengths hears of a request sent or finished only through its
        # own dispatch: for pick-only calls it would keep the last probe's lengths for 10 s (a
        # burst of 16 all went to one replica). A process that picks only probes every time.
        self._use_replica_queue_len_cache = False
        ranks = await super().choose_replicas(candidate_replicas, pending_request)
        assert pending_request is not None
        first = next((rank for rank in ranks if rank), None)
        if not first:
            return ranks
        pick = await self._shortest_queue(first)
        self._unseen_picks.add(pick.replica_id, time.monotonic())
        self.on_request_routed(pending_request, pick.replica_id, None)
        return [[pick]]

    async def _shortest_queue(self, replicas: list[RunningReplica]) -> RunningReplica:
        """The replica of ``replicas`` with the shortest queue (Serve's probe; a replica that
        does not answer counts as full)."""
        if len(replicas) == 1:
            return replicas[0]
        lengths = {r.replica_id: math.inf for r in replicas}
        for replica, length in await self._probe_queue_lens(replicas, 0):
            if length is not None:
                lengths[replica.replica_id] = length
        return min(replicas, key=lambda r: lengths[r.replica_id])


def _pick_only(pending_request: PendingRequest | None) -> bool:
    return pending_request is not None and bool(pending_request.kwargs.get(PICK_ONLY))


def request_router_config(routing: RoutingConfig) -> RequestRouterConfig | None:
    """The engine deployment's ``request_router_config`` for ``routing``; None: Serve's default."""
    if not routing.by_prefix:
        return None
    return RequestRouterConfig(
        request_router_class=f"{__name__}.{PrefixAffinityRouter.__name__}",
        request_router_kwargs={"imbalanced_threshold": routing.max_imbalance},
    )
