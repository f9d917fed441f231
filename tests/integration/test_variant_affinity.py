"""Adapter affinity on both paths: a LoRA variant's requests go to the replica that holds it.

Two replicas of tiny-chat, each holding at most one of its two adapters. On the one-hop URL
HAProxy asks the application's ``VariantRouter`` for a replica; on the shared ``/v1`` the router
asks Serve's multiplexed routing. Both read the same record of which replica holds which
variant, so once each adapter has a replica, all of its requests land there, by either path.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import openai
import pytest
import yaml

from tests.integration.conftest import API_KEY, ROOT, platform_env, running_platform
from tests.integration.test_openai_api import HELLO

MODEL = "tiny-chat"
COLD = "cold-chat"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """(base URL, environment) of a platform serving tiny-chat on two replicas, one adapter each,
    and cold-chat, the same model scaled to zero."""
    config = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    args = config["applications"][0]["args"]
    (chat,) = [m for m in args["models"] if m["model_loading_config"]["model_id"] == MODEL]
    chat["deployment_config"] = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25}}
    chat["multiplex_config"]["max_variants_per_replica"] = 1
    chat["engine_kwargs"].update(
        max_model_len=256, max_num_seqs=8, kv_cache_memory_bytes=64 * 1024 * 1024
    )
    cold = copy.deepcopy(chat)  # the same with no replica until its first request
    cold["model_loading_config"]["model_id"] = COLD
    cold["deployment_config"] = {
        "ray_actor_options": {"num_cpus": 0.25},
        "autoscaling_config": {
            "min_replicas": 0,
            "max_replicas": 1,
            "initial_replicas": 0,
            "upscale_delay_s": 0,
            "downscale_delay_s": 600,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    }
    config["applications"][0]["args"] = {
        "models": [chat, cold],
        "api_keys_env": "PLATFORM_TEST_API_KEYS",
    }
    env = platform_env()
    with running_platform(config, tmp_path_factory.mktemp("affinity"), env=env) as base:
        yield base, env


REPLICA_STATS = """
import json, ray
from ray import serve
ray.init(address="auto", namespace="serve", log_to_driver=False, logging_level="ERROR")
handle = serve.get_deployment_handle("tiny-chat", "platform.tiny-chat")
seen = {}
for _ in range(40):  # each call reaches one replica: until both have answered
    stats = handle.stats.remote().result()
    seen[stats["placement"]["actor_id"]] = {"variants": stats["variants_loaded"], "requests": stats["requests_total"]}
    if len(seen) == 2:
        break
print(json.dumps(seen))
"""


def _replicas(env) -> dict[str, dict]:
    """Each replica's loaded variants and request count, by actor id."""
    done = subprocess.run(
        [sys.executable, "-c", REPLICA_STATS],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen) == 2, seen
    return seen


def _ask(client: openai.OpenAI, model: str, times: int) -> None:
    for _ in range(times):
        assert (
            client.chat.completions.create(model=model, messages=HELLO, max_tokens=2).model == model
        )


def _served(before: dict, after: dict) -> dict[str, int]:
    return {replica: after[replica]["requests"] - before[replica]["requests"] for replica in after}


def test_each_variants_requests_go_to_the_replica_holding_it_on_both_paths(platform):
    base, env = platform
    one_hop = openai.OpenAI(
        base_url=f"{base}/models/{MODEL}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )
    shared = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    for _ in range(5):  # until each adapter has a replica of its own: the first picks may share one
        for variant in ("sql", "poet"):
            _ask(one_hop, f"{MODEL}:{variant}", 1)
            time.sleep(2)  # the replica's record of what it holds reaches Serve's routers
        held = {replica: stats["variants"] for replica, stats in _replicas(env).items()}
        if sorted(held.values()) == [["poet"], ["sql"]]:
            break
    assert sorted(held.values()) == [["poet"], ["sql"]], held  # one adapter per replica
    sql_replica = next(replica for replica, variants in held.items() if variants == ["sql"])

    for client in (one_hop, shared):
        before = _replicas(env)
        _ask(client, f"{MODEL}:sql", 6)
        after = _replicas(env)
        assert _served(before, after) == {
            replica: 6 if replica == sql_replica else 0 for replica in after
        }
        assert {
            replica: stats["variants"] for replica, stats in after.items()
        } == held  # nothing reloaded


def test_a_variant_of_a_model_scaled_to_zero_answers_its_first_request_on_the_model_url(platform):
    """With no replica, HAProxy has none to ask the VariantRouter about: Serve's fallback proxy
    takes the request and waits for the replica it starts."""
    base, _ = platform
    cold = openai.OpenAI(
        base_url=f"{base}/models/{COLD}/v1", api_key=API_KEY, max_retries=0, timeout=300
    )
    _ask(cold, f"{COLD}:sql", 1)
    _ask(cold, f"{COLD}:poet", 1)  # and the next, through the router, on the replica now up
