"""Adapter affinity on both paths: a LoRA variant's requests go to the replica that holds it.

The session platform's affinity-chat (tiny-chat on two replicas, each holding at most one of its
two adapters) and cold-chat (the same scaled to zero). On the one-hop URL HAProxy asks the
application's ``VariantRouter`` for a replica; on the shared ``/v1`` the router asks Serve's
multiplexed routing. Both read the same record of which replica holds which variant, so once each
adapter has a replica, all of its requests land there, by either path. The replicas' counters are
read through Serve's handles on the session's Ray (that test is skipped under ``PLATFORM_URL``;
the scaled-to-zero one runs there too).
"""

from __future__ import annotations

import openai

from tests.integration.helpers import (
    API_KEY,
    HELLO,
    replica_counters,
    requests_served,
    wait_until,
)
from tests.integration.session_config import AFFINITY_CHAT as MODEL
from tests.integration.session_config import COLD_CHAT as COLD


def _replicas(env) -> dict[str, dict]:
    """Each replica's loaded variants and request count, by actor id."""
    return replica_counters(env, MODEL)


def _ask(client: openai.OpenAI, model: str, times: int) -> None:
    for _ in range(times):
        assert (
            client.chat.completions.create(model=model, messages=HELLO, max_tokens=2).model == model
        )


def test_each_variants_requests_go_to_the_replica_holding_it_on_both_paths(platform):
    base, env = platform.url, platform.require_owned().env  # the replicas' counters: its Ray
    one_hop = openai.OpenAI(
        base_url=f"{base}/models/{MODEL}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )
    shared = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    for _ in range(5):  # until each adapter has a replica of its own: the first picks may share one
        for variant in ("sql", "poet"):
            _ask(one_hop, f"{MODEL}:{variant}", 1)
            # until a replica holds it; its record then reaches Serve's routers on its own
            # schedule: an adapter sent before that may evict the other, and the round repeats
            wait_until(
                lambda: _replicas(env),  # noqa: B023
                lambda seen: any(variant in r["variants"] for r in seen.values()),  # noqa: B023
                timeout_s=60,
                every_s=1,
            )
        held = {replica: stats["variants"] for replica, stats in _replicas(env).items()}
        if sorted(held.values()) == [["poet"], ["sql"]]:
            break
    assert sorted(held.values()) == [["poet"], ["sql"]], held  # one adapter per replica
    sql_replica = next(replica for replica, variants in held.items() if variants == ["sql"])

    for client in (one_hop, shared):
        before = _replicas(env)
        _ask(client, f"{MODEL}:sql", 6)
        after = _replicas(env)
        assert requests_served(before, after) == {
            replica: 6 if replica == sql_replica else 0 for replica in after
        }
        assert {
            replica: stats["variants"] for replica, stats in after.items()
        } == held  # nothing reloaded


def test_a_variant_of_a_model_scaled_to_zero_answers_its_first_request_on_the_model_url(platform):
    """With no replica, HAProxy has none to ask the VariantRouter about: Serve's fallback proxy
    takes the request and waits for the replica it starts."""
    base = platform.url
    cold = openai.OpenAI(
        base_url=f"{base}/models/{COLD}/v1", api_key=API_KEY, max_retries=0, timeout=300
    )
    _ask(cold, f"{COLD}:sql", 1)
    _ask(cold, f"{COLD}:poet", 1)  # and the next, through the router, on the replica now up
