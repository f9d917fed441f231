"""Keys live while serving: a key file read again (rotated, revoked), keys sent to running
replicas as ``user_config`` digests, and the rendered config that carries them."""

import pytest
from fastapi.testclient import TestClient

from builders.render import render_serve_config, with_live_keys
from builders.serve_config import validate_serve_config
from common.config_errors import ConfigError
from configs.api_keys import APIKey, key_digest
from configs.server_models import PlatformSettings
from serve.policy.key_ring import KEY_FILE_CHECK_S, KeyRing
from serve.router.app import create_router_app
from serve.router.routing import RouterSettings
from tests.unit.router_fakes import CHAT, ROUTES, FakeEngines


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_a_key_files_change_applies_at_the_next_check_and_an_emptied_file_revokes_it(tmp_path):
    secret = tmp_path / "team.key"
    secret.write_text("first-key-0123456789\n")
    keys = (APIKey("first-key-0123456789", "team", key_file=str(secret)), APIKey("o" * 16, "ops"))
    clock = Clock()
    ring = KeyRing(clock)
    assert [k.digest for k in ring.current(keys)][0] == key_digest(b"first-key-0123456789")
    secret.write_text("second-key-0123456789")
    assert ring.current(keys)[0].digest == key_digest(b"first-key-0123456789")  # not yet read
    clock.now += KEY_FILE_CHECK_S
    assert ring.current(keys)[0].digest == key_digest(b"second-key-0123456789")
    secret.write_text("")
    clock.now += KEY_FILE_CHECK_S
    assert [k.name for k in ring.current(keys)] == ["ops"]


def test_with_every_key_revoked_the_platform_stays_closed(tmp_path):
    secret = tmp_path / "only.key"
    secret.write_text("only-key-0123456789")
    settings = RouterSettings(ROUTES, api_keys=(APIKey("", "only", key_file=str(secret)),))
    c = TestClient(create_router_app(settings, FakeEngines()))
    headers = {"Authorization": "Bearer only-key-0123456789"}
    assert c.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    secret.unlink()
    c = TestClient(create_router_app(settings, FakeEngines()))  # a fresh ring: reads at once
    assert c.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 401
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 401


def test_keys_reach_running_replicas_as_digests_and_replace_the_old_ones():
    settings = RouterSettings(ROUTES, api_keys=(APIKey("old-key-0123456789", "team"),))
    new = APIKey("new-key-0123456789", "team", ("chat",), tokens_per_minute=5).live()
    assert "new-key-0123456789" not in str(new) and new["digest"] == key_digest(
        b"new-key-0123456789"
    )
    live = settings.with_user_config({"api_keys": [new], "request_timeout_s": 5})
    c = TestClient(create_router_app(live, FakeEngines()))
    old, fresh = "Bearer old-key-0123456789", "Bearer new-key-0123456789"
    assert (
        c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": old}).status_code == 401
    )
    assert (
        c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": fresh}).status_code
        == 200
    )
    assert live.api_keys[0].models == ("chat",) and live.request_timeout_s == 5


def _config(tmp_path) -> dict:
    key_file = tmp_path / "team.key"
    key_file.write_text("file-key-0123456789")
    return {
        "applications": [
            {
                "name": "platform",
                "import_path": "builders.app_builder:build_app",
                "args": {
                    "api_keys_env": "LIVE_TEST_KEYS",
                    "api_keys": [{"name": "team", "key_file": str(key_file), "models": ["chat"]}],
                    "models": [
                        {
                            "model_loading_config": {
                                "model_id": "chat",
                                "model_source": "./.models/tiny-chat",
                                "type": "vllm",
                            },
                            "engine_kwargs": {"max_model_len": 256},
                        }
                    ],
                },
            }
        ]
    }


def test_the_deployed_config_carries_the_keys_of_this_environment_and_render_prints_none(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("LIVE_TEST_KEYS", "env-key-0123456789")
    raw = _config(tmp_path)
    _, loaded = validate_serve_config(raw)
    rendered = render_serve_config(raw, loaded)
    live = with_live_keys(rendered, loaded)
    assert "digest" not in str(rendered)
    user_configs = [
        d["user_config"] for app in live["applications"] for d in app.get("deployments", [])
    ]
    assert len(user_configs) == 2  # the router's and the one-hop chat model's
    for user_config in user_configs:
        team, env = user_config["api_keys"]
        assert team["key_file"] and not team["digest"]  # each replica reads the file itself
        assert env["digest"] == key_digest(b"env-key-0123456789")
    assert "env-key-0123456789" not in str(live)
    monkeypatch.delenv("LIVE_TEST_KEYS")  # not set here: back to the keys the cluster built with
    unset = with_live_keys(rendered, loaded)
    assert [
        d["user_config"]["api_keys"] for app in unset["applications"] for d in app["deployments"]
    ] == [None, None]


def test_keys_sent_from_here_are_checked_as_the_build_checks_them(tmp_path, monkeypatch):
    raw = _config(tmp_path)
    _, loaded = validate_serve_config(raw)
    rendered = render_serve_config(raw, loaded)
    for listed in ("short", "env-key-0123456789,env-key-0123456789", ","):
        monkeypatch.setenv("LIVE_TEST_KEYS", listed)  # too short, twice, none at all (open)
        with pytest.raises(ConfigError, match="api_keys_env"):
            with_live_keys(rendered, loaded)


def test_a_replica_sent_no_keys_goes_back_to_the_keys_it_was_built_with():
    built = RouterSettings(ROUTES, api_keys=(APIKey("built-key-0123456789", "team"),))
    pushed = built.with_user_config({"api_keys": [APIKey("pushed-key-0123456789", "x").live()]})
    assert [k.name for k in pushed.api_keys] == ["x"]
    assert pushed.with_user_config({"api_keys": None}).api_keys == built.api_keys


def test_a_replica_reads_the_entries_it_is_sent_unless_keys_come_with_them(monkeypatch):
    """``key_sources``: the file's entries, sent as user_config; the replica reads their keys in
    its own environment, checked as the build checks them, unless keys read where the config was
    applied come with them."""
    sources = {"api_keys": [{"name": "team", "key_env": "ENTRY_KEY", "models": ["chat"]}]}
    monkeypatch.setenv("ENTRY_KEY", "entry-key-0123456789")
    read = RouterSettings(ROUTES).with_user_config({"key_sources": sources})
    assert [(k.name, k.models) for k in read.api_keys] == [("team", ("chat",))]
    assert read.with_user_config({"api_keys": None}).api_keys == read.api_keys
    pushed = APIKey("pushed-key-0123456789", "x").live()
    both = RouterSettings(ROUTES).with_user_config({"key_sources": sources, "api_keys": [pushed]})
    assert [k.name for k in both.api_keys] == ["x"]
    monkeypatch.setenv("ENTRY_KEY", "short")
    with pytest.raises(ConfigError, match="api_keys"):
        RouterSettings(ROUTES).with_user_config({"key_sources": sources})
    monkeypatch.delenv("ENTRY_KEY")  # an entry this replica cannot read: applied elsewhere
    assert [
        k.name
        for k in RouterSettings(ROUTES)
        .with_user_config({"key_sources": sources, "api_keys": [pushed]})
        .api_keys
    ] == ["x"]


def test_a_rendered_replica_refuses_everything_until_its_keys_arrive():
    """Serve may pass a request to a replica's HTTP port before it applies the user_config that
    carries the keys: until then every request is a 401, never served open."""
    pending = RouterSettings(ROUTES, keys_pending=True)
    models = TestClient(create_router_app(pending, FakeEngines())).get("/v1/models")
    assert models.status_code == 401
    arrived = pending.with_user_config({"key_sources": {}})  # a platform without keys: open
    assert (
        TestClient(create_router_app(arrived, FakeEngines())).get("/v1/models").status_code == 200
    )


def test_a_replica_that_starts_while_a_key_file_is_emptied_serves_with_that_key_revoked(tmp_path):
    """Emptying a key file revokes its key (the documented way): a replica that starts or is
    reconfigured meanwhile neither fails nor opens; the file's key applies once it is back."""
    path = tmp_path / "team.key"
    path.write_text("")
    sources = {"api_keys": [{"name": "team", "key_file": str(path)}]}
    settings = RouterSettings(ROUTES, keys_pending=True).with_user_config({"key_sources": sources})
    key = "team-key-0123456789"

    def status() -> int:
        app = TestClient(create_router_app(settings, FakeEngines()))
        return app.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code

    assert status() == 401  # closed: the only key is revoked
    path.write_text(key)
    assert status() == 200


def test_live_keys_are_none_without_the_variable(monkeypatch):
    monkeypatch.setenv("SOME_KEYS", "")
    assert PlatformSettings.model_validate({"api_keys_env": "SOME_KEYS"}).live_api_keys() is None
