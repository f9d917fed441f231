"""The admin API and the usage ledger on the router's real app (stand-in engines, a real SQLite
file): 401/403 in the OpenAI shape, a key made live, its usage recorded once, revoked live."""

import pytest
from fastapi.testclient import TestClient
from router_fakes import ROUTES, FakeEngines, assert_openai_error

from common.engine_response import EngineResponse
from configs.api_keys import APIKey
from serve.router.app import create_router_app
from serve.router.routing import RouterSettings
from serve.usage.database import usage_database

ADMIN = APIKey("admin-secret-0123456789", "ops", admin=True)
USER = APIKey("user-secret-0123456789", "user")
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


class CountingEngines(FakeEngines):
    async def call(self, route, capability, body):
        await super().call(route, capability, body)
        return EngineResponse.json({"object": "chat.completion", "usage": USAGE})


@pytest.fixture
def admin(tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    settings = RouterSettings(ROUTES, api_keys=(ADMIN, USER), usage_database=url)
    client = TestClient(create_router_app(settings, CountingEngines()))
    yield client, usage_database(url)
    usage_database(url).close()


def _as(key: APIKey | str) -> dict:
    return {"Authorization": f"Bearer {key if isinstance(key, str) else key.secret}"}


def test_the_admin_api_is_a_401_without_a_key_and_a_403_for_another_key(admin):
    client, _ = admin
    assert_openai_error(client.get("/admin/keys"), 401, "invalid_api_key")
    assert_openai_error(client.get("/admin/usage", headers=_as(USER)), 403, "admin_key_required")
    bad = client.post("/admin/keys", json={"name": "no spaces"}, headers=_as(ADMIN))
    assert_openai_error(bad, 400, param="name")
    taken = client.post("/admin/keys", json={"name": "user"}, headers=_as(ADMIN))
    assert_openai_error(taken, 409, "name_taken")


def test_a_made_key_serves_at_once_its_usage_is_recorded_and_revoking_it_refuses_it(admin):
    client, db = admin
    made = client.post(
        "/admin/keys", json={"name": "team-a", "models": ["chat"]}, headers=_as(ADMIN)
    ).json()
    assert made["name"] == "team-a" and made["key"].startswith("sk-")
    db.refresh()  # what the background thread does every 2 s
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=chat, headers=_as(made["key"])).is_success
    outside = client.post(
        "/v1/embeddings", json={"model": "embed", "input": "x"}, headers=_as(made["key"])
    )
    assert_openai_error(outside, 404, "model_not_found")
    db.ledger.flush()
    rows = client.get("/admin/usage", params={"key": "team-a"}, headers=_as(ADMIN)).json()["data"]
    by_model = {(r["model"], r["endpoint"]): r for r in rows}
    served = by_model[("chat", "/v1/chat/completions")]
    assert (served["requests"], served["prompt_tokens"], served["completion_tokens"]) == (2, 18, 8)
    assert by_model[("", "/v1/embeddings")]["errors"] == 1
    listed = client.get("/admin/keys", headers=_as(ADMIN)).json()["data"]
    assert [(k["name"], k["month_tokens"]) for k in listed] == [("team-a", 26)]
    csv = client.get(
        "/admin/usage", params={"format": "csv", "group_by": "key"}, headers=_as(ADMIN)
    )
    assert csv.headers["content-type"].startswith("text/csv") and "team-a,3,1,18,8,26," in csv.text
    assert client.delete(f"/admin/keys/{made['id']}", headers=_as(ADMIN)).json()["deleted"]
    db.refresh()
    gone = client.post("/v1/chat/completions", json=chat, headers=_as(made["key"]))
    assert_openai_error(gone, 401, "invalid_api_key")
    assert_openai_error(client.delete(f"/admin/keys/{made['id']}", headers=_as(ADMIN)), 404)


def test_a_key_past_its_monthly_budget_is_refused_with_a_429_that_says_so(admin):
    client, db = admin
    made = client.post(
        "/admin/keys", json={"name": "small", "monthly_token_budget": 20}, headers=_as(ADMIN)
    ).json()
    db.refresh()
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    answers = [
        client.post("/v1/chat/completions", json=chat, headers=_as(made["key"])) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert_openai_error(answers[2], 429, "monthly_token_budget_exceeded")
    assert "resets at" in answers[2].json()["error"]["message"]
    raised = client.patch(
        f"/admin/keys/{made['id']}", json={"monthly_token_budget": 1000}, headers=_as(ADMIN)
    )
    assert raised.json()["monthly_token_budget"] == 1000
    db.refresh()
    assert client.post("/v1/chat/completions", json=chat, headers=_as(made["key"])).is_success


def test_the_console_serves_its_usage_page_and_the_vendored_chart_library(admin):
    client, _ = admin
    page = client.get("/console").text
    assert 'data-tab="usage"' in page and '<script src="console/chart.umd.min.js"' in page
    chart = client.get("/console/chart.umd.min.js")
    assert chart.headers["content-type"].startswith("text/javascript")
    assert chart.text.startswith("/*!\n * Chart.js v4.5.1")
    assert "/admin/usage" in client.get("/console/usage.js").text
