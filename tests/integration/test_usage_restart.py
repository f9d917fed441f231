"""The usage ledger and the keys made live outlive the platform: a platform of its own is stopped
and started again on the same SQLite file; the key made before still serves, its usage is still
counted, and its spent daily budget still refuses it. A YAML key's monthly budget refuses it on
the router and on the one-hop URL alike; a key that spent its requests of the minute is still
refused on both once the per-key limits actor was killed and Ray restarted it.

A platform of its own (started twice): the session platform must not be restarted.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import yaml

from tests.integration.helpers import (
    ADMIN_KEY,
    ADMIN_KEY_ENTRY,
    LIMITED_KEY,
    ROOT,
    auth_headers,
    on_session_ray,
    platform_env,
    running_platform,
    wait_until,
)
from tests.integration.session_config import CHAT

pytestmark = pytest.mark.cluster  # a platform of its own: the docstring says why

BUDGET = 40  # tokens a day: a few tiny-chat answers of 5 tokens
YAML_BUDGET_KEY = "test-key-yaml-monthly-budget"
YAML_KEYS = [
    {"name": "yaml-budget", "key_env": "PLATFORM_TEST_YAML_BUDGET_KEY", "monthly_token_budget": 40},
    {"name": "limited", "key_env": "PLATFORM_TEST_LIMITED_KEY", "requests_per_minute": 3},
]

# A driver of the platform's Ray: spends the limited key's 3 requests of the minute on both paths
# (the 4th is refused), kills the limits actor once its windows are saved, and asks again on each
# path until the restarted actor answers (a 503 limits_unavailable meanwhile): all in one process,
# well within the minute.
KILL_THE_LIMITS = """
import json, os, sys, time
import httpx, ray
from serve.policy.key_limits import KeyLimits
base, key, model = sys.argv[1:4]
ray.init(address="auto", namespace="serve", log_to_driver=False, logging_level="ERROR")
paths = [f"{base}/v1/models", f"{base}/models/{model}/v1/models"]
def status(url):
    return httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code
spent = [status(paths[n % 2]) for n in range(4)]
actor = ray.get_actor(KeyLimits("platform").actor_name)
ray.get(actor.saved.remote())
pid = lambda: ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)
before = pid()
ray.kill(actor, no_restart=False)
after = []
for url in paths:
    for _ in range(300):
        if (code := status(url)) != 503:
            break
        time.sleep(0.1)
    after.append(code)
print(json.dumps({"spent": spent, "after": after, "restarted": pid() != before}))
"""


def _config(tmp_path) -> dict:
    config = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    args = config["applications"][0]["args"]
    args["models"] = [m for m in args["models"] if m["model_loading_config"]["model_id"] == CHAT]
    args.pop("pipelines", None)
    args.pop("groups", None)
    args["api_keys"] = [ADMIN_KEY_ENTRY, *YAML_KEYS]
    args["api_keys_env"] = "PLATFORM_TEST_API_KEYS"  # the key that /ready is waited for with
    args["usage"] = {"database": f"sqlite:///{tmp_path.resolve()}/usage.db"}
    return config


def _usage(base: str) -> list[dict]:
    answer = httpx.get(
        f"{base}/admin/usage", params={"group_by": "key,model"}, headers=auth_headers(ADMIN_KEY)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _of(key: str, rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["key"] == key]


def _chat_until_refused(base: str, key: str, prefix: str = "") -> tuple[int, openai.RateLimitError]:
    accepted = wait_until(  # every router and replica reads new keys within 2 s
        lambda: httpx.get(f"{base}/v1/models", headers=auth_headers(key)).status_code,
        lambda status: status == 200,
    )
    assert accepted == 200
    client = openai.OpenAI(base_url=f"{base}{prefix}/v1", api_key=key, max_retries=0, timeout=120)
    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    for answered in range(BUDGET + 1):  # each answer spends at least one token
        try:
            client.chat.completions.create(**body)
        except openai.RateLimitError as refused:
            return answered, refused
    raise AssertionError(f"{BUDGET + 1} answers on a budget of {BUDGET} tokens")


def _env() -> dict[str, str]:
    return {**platform_env(), "PLATFORM_TEST_YAML_BUDGET_KEY": YAML_BUDGET_KEY}


def _yaml_budget_refused_on_both_paths(base: str) -> int:
    """The YAML key's monthly budget spent on the router: the one-hop URL refuses it too, once
    its replica read the router's counts (written every second, read every 2 s). The answers the
    router gave before its refusal."""
    answered, refused = _chat_until_refused(base, YAML_BUDGET_KEY)
    assert refused.code == "monthly_token_budget_exceeded", refused
    assert int(refused.response.headers["retry-after"]) >= 1
    one_hop = wait_until(
        lambda: _chat_until_refused(base, YAML_BUDGET_KEY, f"/models/{CHAT}"),
        lambda seen: seen[0] == 0,
    )
    assert one_hop[0] == 0 and one_hop[1].code == "monthly_token_budget_exceeded", one_hop
    return answered


def test_the_ledger_keys_and_budgets_outlive_a_restart(tmp_path):
    config, env = _config(tmp_path), _env()
    (tmp_path / "first").mkdir()
    with running_platform(config, tmp_path / "first", env=env) as base:
        made = httpx.post(
            f"{base}/admin/keys",
            json={"name": "team-a", "daily_token_budget": BUDGET},
            headers=auth_headers(ADMIN_KEY),
        )
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        answered, refused = _chat_until_refused(base, key)
        assert answered >= 1 and refused.code == "daily_token_budget_exceeded"
        assert _yaml_budget_refused_on_both_paths(base) >= 1
        limits = on_session_ray(env, KILL_THE_LIMITS, base, LIMITED_KEY, CHAT)
        assert limits == {"spent": [200, 200, 200, 429], "after": [429, 429], "restarted": True}
        # the ledger caught up (written every second): every answer and the refusal counted
        before = wait_until(
            lambda: _usage(base),
            lambda rows: sum(r["requests"] for r in rows if r["key"] == "team-a") == answered + 1,
        )
    (tmp_path / "second").mkdir()
    with running_platform(_config(tmp_path), tmp_path / "second", env=_env()) as base:
        # every count was written before the platform stopped
        assert _of("team-a", _usage(base)) == _of("team-a", before)
        assert _yaml_budget_refused_on_both_paths(base) == 0  # its month's spending was kept
        answered, refused = _chat_until_refused(base, key)
        assert answered == 0 and refused.code == "daily_token_budget_exceeded"
        keys = httpx.get(f"{base}/admin/keys", headers=auth_headers(ADMIN_KEY)).json()["data"]
        assert [k["name"] for k in keys] == ["team-a"] and keys[0]["day_tokens"] >= BUDGET
