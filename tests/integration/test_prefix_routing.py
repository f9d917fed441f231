"""Routing by prompt prefix (``routing: prefix_affinity``) on both paths: the shared ``/v1`` and
the model's own URL (one hop through HAProxy, which asks the ``VariantRouter``).

An edit of the session platform adds ``prefix-chat``: tiny-chat on two small replicas, routed by
prefix with a load bound of ``BOUND`` requests. On each path, requests sharing a prefix, sent one
after another, all land on one replica and a second prefix on the other; a burst of one hot prefix
spills over to the other replica within the bound; the routing decisions are counted in the
platform's metrics. A replica killed leaves Ray's prefix tree. Which replica took what is read
from the replicas' own request counters (``EngineDeployment.stats``) and the tree actor of Ray's
``PrefixCacheAffinityRouter``. The edit is taken back at the end.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.integration.helpers import (
    API_KEY,
    auth_headers,
    on_session_ray,
    replica_counters,
    requests_served,
    wait_until,
)
from tests.integration.session_config import CHAT

pytestmark = pytest.mark.edits_platform

MODEL, BOUND, HOT = "prefix-chat", 2, 16
# Two system prompts with nothing in common; each request adds a short question of its own.
# Each path has its own, so its first request of each finds no replica holding it.
PREFIXES = {
    "shared": (
        "You answer questions about the harbour office, its ferries and berths. " * 5,
        "Railway timetable desk: every reply names a platform and a departure. " * 5,
    ),
    "one-hop": (
        "Lighthouse keeper's log: each answer gives the lamp's hours and weather. " * 5,
        "Observatory help line, where replies list a telescope and a clear night. " * 5,
    ),
}
METRIC_PATH = {"shared": "router", "one-hop": "direct"}  # the decisions' path label
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
def clients(platform):
    """The platform with ``MODEL`` added; clients of its ``/v1`` and of the model's own URL, by
    path. Taken back afterwards."""
    owned = platform.require_owned()
    result = owned.apply(_prefix_chat(owned.config))
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield {
            path: openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=120)
            for path, url in (
                ("shared", f"{owned.url}/v1"),
                ("one-hop", f"{owned.url}/models/{MODEL}/v1"),
            )
        }
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


def _decisions(platform, path: str) -> Counter[str]:
    """The model's routing decisions on ``path`` so far, by decision, from Ray's metrics
    endpoint (summed over the processes that route: the routers, the ``VariantRouter``)."""
    wanted = re.compile(r"ray_platform_routing_decisions_total\{(.*)\} (\S+)")
    counts: Counter[str] = Counter()
    for line in httpx.get(platform.require_owned().metrics_url, timeout=30).text.splitlines():
        if match := wanted.fullmatch(line):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
            if labels.get("model") == MODEL and labels.get("path") == METRIC_PATH[path]:
                counts[labels["decision"]] += int(float(match[2]))
    return counts


def _decisions_added(platform, path: str, before: Counter[str], done) -> Counter[str]:
    """The decisions counted since ``before`` once ``done`` holds of them (Ray exports each
    process's metrics on its own schedule)."""
    return wait_until(lambda: _decisions(platform, path) - before, done, timeout_s=60, every_s=2)


@pytest.mark.parametrize("path", PREFIXES)
def test_requests_sharing_a_prefix_land_on_one_replica_while_load_allows(platform, clients, path):
    """One request at a time, so load never outweighs affinity: each prefix's six requests on one
    replica (by Serve's default pick, or HAProxy's least connections, all six on one would happen
    3 times in 100 or never), and the second prefix on the replica that holds none of the first
    (Ray's router: the least-filled tenant). Each prefix's first request finds it nowhere, the
    other five on a replica: counted as such. The replica answering /ready found some of its
    prompt tokens in vLLM's prefix cache."""
    counted = _decisions(platform, path)
    by_prefix = []
    for prefix in PREFIXES[path]:
        before = replica_counters(platform.env, MODEL)
        for question in range(6):
            _ask(clients[path], prefix, f"Question {question}: which one is first?")
        by_prefix.append(requests_served(before, replica_counters(platform.env, MODEL)))
    for served in by_prefix:
        assert sorted(served.values()) == [0, 6], by_prefix
    first, second = ({r for r, n in served.items() if n} for served in by_prefix)
    assert first != second, by_prefix
    ready = httpx.get(f"{platform.url}/ready", headers=auth_headers(), timeout=30).json()
    assert ready["models"][MODEL]["prefix_cache_hit_rate"] > 0, ready["models"][MODEL]  # vLLM's
    expected = Counter({"new_prefix": 2, "affinity": 10})
    assert _decisions_added(platform, path, counted, lambda added: added == expected) == expected


@pytest.mark.parametrize("path", PREFIXES)
def test_a_hot_prefix_spills_over_within_the_bound(platform, clients, path):
    """``HOT`` streams of one prefix at once: load wins once the replicas' queues differ by more
    than ``BOUND``, so neither takes more than its half by more than the bound; the requests
    where load won are counted."""
    counted = _decisions(platform, path)
    before = replica_counters(platform.env, MODEL)
    with ThreadPoolExecutor(HOT) as pool:
        asked = [
            pool.submit(_ask, clients[path], PREFIXES[path][0], f"Hot question {i}: why?", 128)
            for i in range(HOT)
        ]
        for answer in asked:
            answer.result()
    served = requests_served(before, replica_counters(platform.env, MODEL))
    assert sum(served.values()) == HOT, served
    assert max(served.values()) <= HOT // 2 + BOUND, served
    added = _decisions_added(platform, path, counted, lambda added: added.total() >= HOT)
    assert added["load"] > 0 and added.total() >= HOT, added


def test_a_killed_replica_leaves_the_routing_state(platform, clients):
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
    for client in clients.values():
        _ask(client, PREFIXES["shared"][0], "After the kill: still there?")
