"""The usage ledger and the keys made live outlive the platform: a platform of its own is stopped
and started again on the same SQLite file; the key made before still serves, its usage is still
counted, and its spent daily budget still refuses it.

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
    ROOT,
    auth_headers,
    platform_env,
    running_platform,
    wait_until,
)
from tests.integration.session_config import CHAT

pytestmark = pytest.mark.cluster  # a platform of its own: the docstring says why

BUDGET = 40  # tokens a day: a few tiny-chat answers of 5 tokens


def _config(tmp_path) -> dict:
    config = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    args = config["applications"][0]["args"]
    args["models"] = [m for m in args["models"] if m["model_loading_config"]["model_id"] == CHAT]
    args.pop("pipelines", None)
    args.pop("groups", None)
    args["api_keys"] = [ADMIN_KEY_ENTRY]
    args["api_keys_env"] = "PLATFORM_TEST_API_KEYS"  # the key that /ready is waited for with
    args["usage"] = {"database": f"sqlite:///{tmp_path.resolve()}/usage.db"}
    return config


def _usage(base: str) -> list[dict]:
    answer = httpx.get(
        f"{base}/admin/usage", params={"group_by": "key,model"}, headers=auth_headers(ADMIN_KEY)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _chat_until_refused(base: str, key: str) -> tuple[int, openai.RateLimitError]:
    accepted = wait_until(  # every router and replica reads new keys within 2 s
        lambda: httpx.get(f"{base}/v1/models", headers=auth_headers(key)).status_code,
        lambda status: status == 200,
    )
    assert accepted == 200
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    for answered in range(BUDGET + 1):  # each answer spends at least one token
        try:
            client.chat.completions.create(**body)
        except openai.RateLimitError as refused:
            return answered, refused
    raise AssertionError(f"{BUDGET + 1} answers on a budget of {BUDGET} tokens")


def test_the_ledger_keys_and_budgets_outlive_a_restart(tmp_path):
    config, env = _config(tmp_path), platform_env()
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
        # the ledger caught up (written every second): every answer and the refusal counted
        before = wait_until(
            lambda: _usage(base),
            lambda rows: sum(r["requests"] for r in rows if r["key"] == "team-a") == answered + 1,
        )
    (tmp_path / "second").mkdir()
    with running_platform(_config(tmp_path), tmp_path / "second", env=platform_env()) as base:
        assert _usage(base) == before  # every count was written before the platform stopped
        answered, refused = _chat_until_refused(base, key)
        assert answered == 0 and refused.code == "daily_token_budget_exceeded"
        keys = httpx.get(f"{base}/admin/keys", headers=auth_headers(ADMIN_KEY)).json()["data"]
        assert [k["name"] for k in keys] == ["team-a"] and keys[0]["day_tokens"] >= BUDGET
