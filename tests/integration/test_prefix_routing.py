"""Routing by prompt prefix on the shared ``/v1`` (``routing: prefix_affinity``).

An edit of the session platform adds ``prefix-chat``: tiny-chat on two small replicas, routed by
prefix with a load bound of ``BOUND`` requests. Requests sharing a prefix, sent one after another,
all land on one replica and a second prefix on the other; a burst of one hot prefix spills over to
the other replica within the bound; a replica killed leaves Ray's prefix tree. Which replica took
what is read from the replicas' own request counters (``EngineDeployment.stats``) and the tree
actor of Ray's ``PrefixCacheAffinityRouter``. The edit is taken back at the end.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.integration.helpers import (
    API_KEY,
    on_session_ray,
    replica_counters,
    requests_served,
    wait_until,
)
from tests.integration.session_config import CHAT

pytestmark = pytest.mark.edits_platform

MODEL, BOUND, HOT = "prefix-chat", 2, 16
# Two system prompts with nothing in common; each request adds a short question of its own.
PREFIXES = (
    "You answer questions about the harbour office, its ferries and berths. " * 5,
    "Railway timetable desk: every reply names a platform and a departure. " * 5,
)
# Ray's prefix tree for the model's deployment (ray/llm/_internal/serve/routing_policies/
# prefix_aware/prefix_aware_router.py, Ray 2.60): a detached actor named per deployment.
TREE = """
import json, sys, ray
ray.init(address="auto", namespace="serve", log_to_driver=False, logging_level="ERROR")
tree = ray.get_actor("LlmPrefixTreeActor", namespace="serve::platform.{model}::{model}")
if len(sys.argv) > 1:  # a tenant (a replica's full id, its actor's name) to kill
    ray.kill(ray.get_actor(sys.argv[1], namespace="serve"), no_restart=True)
print(json.dumps(sorted(ray.get(tree.getattr.remote("tenant_to_char_count")))))
"""


def _prefix_chat(config: dict) -> dict:
    """The session's config with tiny-chat again as ``MODEL``: two replicas routed by prefix."""
    edited = copy.deepcopy(config)
    models = edited["applications"][0]["args"]["models"]
    (chat,) = [m for m in models if m["model_loading_config"]["model_id"] == CHAT]
    models.append(
        {
            "model_loading_config": {**chat["model_loading_config"], "model_id": MODEL},
            "deployment_config": {
                "num_replicas": 2,
                "ray_actor_options": {"num_cpus": 0.25},
                # The edit is taken back while the killed replica's replacement may still be
                # starting: Serve waits this long (20 s by default) for it to stop before it
                # kills it. Nothing else stops these replicas.
                "graceful_shutdown_timeout_s": 1,
            },
            "engine_kwargs": {
                "max_model_len": 1024,
                "max_num_seqs": HOT,  # room for the whole burst on one replica: only load spills
                "kv_cache_memory_bytes": 64 * 1024 * 1024,
                "dtype": "float32",
                "enforce_eager": True,
            },
            "routing": {"policy": "prefix_affinity", "max_imbalance": BOUND},
        }
    )
    return edited


@pytest.fixture(scope="module")
def shared(platform):
    """The platform with ``MODEL`` added; a client of its ``/v1``. Taken back afterwards."""
    owned = platform.require_owned()
    result = owned.apply(_prefix_chat(owned.config))
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield openai.OpenAI(base_url=f"{owned.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    finally:
        owned.restore()


def _ask(client: openai.OpenAI, prefix: str, question: str, max_tokens: int = 4) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": prefix}, {"role": "user", "content": question}],
        max_tokens=max_tokens,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert sum(1 for c in stream if c.choices and c.choices[0].delta.content) > 0


def _tree(env: dict[str, str], *kill: str) -> list[str]:
    """The replicas (tenants) in the model's prefix tree, after killing ``kill``'s actor."""
    return on_session_ray(env, TREE.format(model=MODEL), *kill)


def test_requests_sharing_a_prefix_land_on_one_replica_while_load_allows(platform, shared):
    """One request at a time, so load never outweighs affinity: each prefix's six requests on one
    replica (by Serve's default pick, all six on one would happen 3 times in 100), and the second
    prefix on the replica that holds none of the first (Ray's router: the least-filled tenant)."""
    by_prefix = []
    for prefix in PREFIXES:
        before = replica_counters(platform.env, MODEL)
        for question in range(6):
            _ask(shared, prefix, f"Question {question}: which one is first?")
        by_prefix.append(requests_served(before, replica_counters(platform.env, MODEL)))
    for served in by_prefix:
        assert sorted(served.values()) == [0, 6], by_prefix
    first, second = ({r for r, n in served.items() if n} for served in by_prefix)
    assert first != second, by_prefix


def test_a_hot_prefix_spills_over_within_the_bound(platform, shared):
    """``HOT`` streams of one prefix at once: load wins once the replicas' queues differ by more
    than ``BOUND``, so neither takes more than its half by more than the bound."""
    before = replica_counters(platform.env, MODEL)
    with ThreadPoolExecutor(HOT) as pool:
        asked = [
            pool.submit(_ask, shared, PREFIXES[0], f"Hot question {i}: why?", 128)
            for i in range(HOT)
        ]
        for answer in asked:
            answer.result()
    served = requests_served(before, replica_counters(platform.env, MODEL))
    assert sum(served.values()) == HOT, served
    assert max(served.values()) <= HOT // 2 + BOUND, served


def test_the_models_own_url_answers_through_its_ingress_request_router(platform, shared):
    """Under HAProxy Serve takes a request router on the engine deployment (the one-hop
    ingress) only beside an ingress request router, which HAProxy asks for each request."""
    one_hop = openai.OpenAI(
        base_url=f"{platform.url}/models/{MODEL}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )
    _ask(one_hop, PREFIXES[1], "Through the model's own URL?")


def test_a_killed_replica_leaves_the_routing_state(platform, shared):
    """A replica's actor killed: Serve's routers drop it, and Ray's router removes it from the
    prefix tree, so no prefix is sent to it; the model goes on answering."""
    tenants = _tree(platform.env)
    assert len(tenants) == 2, tenants
    victim = tenants[0]
    _tree(platform.env, victim)
    left = wait_until(
        lambda: _tree(platform.env),
        lambda now: victim not in now,
        timeout_s=180,
        every_s=2,
    )
    assert victim not in left, left
    _ask(shared, PREFIXES[0], "After the kill: still there?")
