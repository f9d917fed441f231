"""The usage ledger's database layer on a real SQLite file: batched writes summed into rollups,
a failed write retried, keys stored by digest, budgets and the usage report."""

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine

from configs.api_keys import APIKey, APIKeyEntry
from configs.server_models import PlatformSettings
from serve.policy.budgets import check_budget, next_month
from serve.router.errors import APIError
from serve.usage.database import UsageDatabase, open_engine
from serve.usage.key_store import KeyStore
from serve.usage.ledger import Answered, UsageLedger
from serve.usage.reports import UsageQuery, as_csv, usage_rows

NOW = time.time()


def _chat(key="team-a", model="chat", status=200, prompt=5, completion=7, at=NOW):
    return Answered(key, model, "/v1/chat/completions", status, prompt, completion, 0.25, at)


def _stored(db: UsageDatabase, name: str) -> APIKey:
    """A stored key as the request policy finds it: from the last refresh, budgets included."""
    return next(key for key in db.snapshot.keys if key.name == name)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/usage.db"


def test_two_writers_sum_into_one_rollup_row_per_minute(url):
    engine = open_engine(url)
    first, second = UsageLedger(engine), UsageLedger(open_engine(url))
    for ledger in (first, second, first):
        ledger.record(_chat())
    first.record(_chat(status=429, prompt=0, completion=0))
    assert first.flush() == 2 and second.flush() == 1
    first.record(_chat(prompt=1, completion=1))
    first.flush()
    (row,) = usage_rows(engine, UsageQuery())
    assert row["requests"] == 5 and row["errors"] == 1
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (16, 22, 38)


def test_a_write_that_fails_is_kept_for_the_next_flush(url, tmp_path):
    ledger = UsageLedger(create_engine(f"sqlite:///{tmp_path}/missing/dir/usage.db"))
    ledger.record(_chat())
    assert ledger.flush() == 0 and ledger.pending_tokens("team-a", datetime(2000, 1, 1)) == 12
    ledger.engine = open_engine(url)
    assert ledger.flush() == 1
    assert usage_rows(ledger.engine, UsageQuery())[0]["total_tokens"] == 12


def test_a_stored_key_keeps_its_digest_never_its_secret(url, tmp_path):
    store = KeyStore(open_engine(url))
    row, secret = store.create("team-a", {"models": ["chat"], "tokens_per_minute": 100})
    assert secret.encode() not in (tmp_path / "usage.db").read_bytes()
    assert row.digest == APIKey(secret, "team-a").digest
    changed = store.update(row.id, {"models": [], "monthly_token_budget": 10})
    assert changed is not None and changed.models == "" and changed.monthly_token_budget == 10
    assert store.update("key_nothing", {"models": []}) is None
    assert store.delete(row.id) and not store.delete(row.id) and store.all() == []


def test_a_key_past_its_budget_is_a_429_that_says_which_and_when_it_resets(url):
    db = UsageDatabase(url)
    try:
        row, secret = db.keys.create(
            "team-a", {"monthly_token_budget": 20, "daily_token_budget": 30}
        )
        db.refresh()
        key = _stored(db, "team-a")
        assert key.digest == APIKey(secret, "team-a").digest
        db.record(_chat(prompt=5, completion=7))
        check_budget(db, key)  # 12 of 20: served
        db.record(_chat(prompt=5, completion=7))  # not written yet: still counted
        with pytest.raises(APIError) as refused:
            check_budget(db, key)
        assert refused.value.status_code == 429
        assert refused.value.code == "monthly_token_budget_exceeded"
        resets = next_month(datetime.now(UTC))
        assert resets.isoformat() in refused.value.message
        assert int((refused.value.headers or {})["Retry-After"]) >= 1
        db.keys.update(row.id, {"monthly_token_budget": 1000, "daily_token_budget": 24})
        db.ledger.flush()
        db.refresh()
        with pytest.raises(APIError) as daily:
            check_budget(db, _stored(db, "team-a"))
        assert daily.value.code == "daily_token_budget_exceeded"
        check_budget(db, APIKey("another-secret-key", "no-budget"))
    finally:
        db.close()


def test_a_yaml_key_with_a_budget_is_refused_on_both_paths_as_a_made_one_is(url, monkeypatch):
    monkeypatch.setenv("TEAM_B_KEY", "a-yaml-key-of-team-b")
    entry = APIKeyEntry(name="team-b", key_env="TEAM_B_KEY", daily_token_budget=12)
    routed = entry.key(entry.secret())  # as the router holds it
    one_hop = APIKey.from_live(routed.live())  # as a one-hop replica gets it (its user_config)
    assert one_hop.daily_token_budget == 12 and one_hop.monthly_token_budget is None
    db = UsageDatabase(url)
    try:
        check_budget(db, routed)
        db.record(_chat(key="team-b", prompt=5, completion=7))
        for key in (routed, one_hop):
            with pytest.raises(APIError) as refused:
                check_budget(db, key)
            assert refused.value.code == "daily_token_budget_exceeded"
            assert int((refused.value.headers or {})["Retry-After"]) >= 1
    finally:
        db.close()


def test_a_yaml_budget_without_a_ledger_to_count_it_is_refused_by_name():
    budgeted = {"name": "team-b", "key_env": "TEAM_B_KEY", "monthly_token_budget": 10}
    with pytest.raises(ValidationError, match=r"api_keys\[0\] \('team-b'\) has a token budget"):
        PlatformSettings.model_validate({"api_keys": [budgeted]})
    database = {"database": "sqlite:///~/ledger/usage.db"}
    settings = PlatformSettings.model_validate({"api_keys": [budgeted], "usage": database})
    assert settings.usage.database == f"sqlite:///{Path.home()}/ledger/usage.db"


def test_usage_is_reported_by_the_groups_and_period_asked_as_json_or_csv(url):
    engine = open_engine(url)
    ledger = UsageLedger(engine)
    earlier = datetime(2026, 11, 3, 10, 15, tzinfo=UTC).timestamp()
    ledger.record(_chat(at=earlier))
    ledger.record(_chat(at=earlier + 3600))
    ledger.record(_chat(key="team-b", model="embed", completion=0, at=earlier))
    ledger.flush()
    by_day = usage_rows(engine, UsageQuery(group_by=("key", "day")))
    assert [(r["key"], r["day"], r["requests"]) for r in by_day] == [
        ("team-a", "2026-11-03T00:00:00Z", 2),
        ("team-b", "2026-11-03T00:00:00Z", 1),
    ]
    only = usage_rows(engine, UsageQuery(model="chat", since=datetime(2026, 11, 3, 11)))
    assert [(r["key"], r["requests"]) for r in only] == [("team-a", 1)]
    csv = as_csv(usage_rows(engine, UsageQuery(group_by=("model",))), ("model",))
    assert csv.splitlines()[0].startswith("model,requests,errors,prompt_tokens")
    assert "embed,1,0,5,0,5," in csv
    with pytest.raises(ValueError, match="at most one of minute"):
        UsageQuery(group_by=("day", "hour")).check()


def test_a_process_started_later_finds_the_ledger_keys_and_budgets(url):
    first = UsageDatabase(url)
    _, secret = first.keys.create("team-a", {"daily_token_budget": 10})
    first.record(_chat())
    first.close()  # what a stopping process does: its last counts written
    again = UsageDatabase(url)  # a restarted router or replica
    try:
        assert [k.name for k in again.snapshot.keys] == ["team-a"]
        assert again.snapshot.keys[0].digest == APIKey(secret, "team-a").digest
        with pytest.raises(APIError) as refused:
            check_budget(again, _stored(again, "team-a"))
        assert refused.value.code == "daily_token_budget_exceeded"
    finally:
        again.close()
