"""``model_config.yaml`` rendered as one Serve application per model: names, routes, args."""

import pytest
import yaml

from builders.render import render_serve_config
from builders.serve_config import rendered_schema, validate_serve_config
from deploy_app import main
from tests.unit.config_entries import platform_app, vision_model, vllm_model


def _render(*apps: dict) -> dict:
    raw = {"applications": list(apps)}
    _, loaded = validate_serve_config(raw)
    return {app.name: app for app in rendered_schema(render_serve_config(raw, loaded)).applications}


def test_each_model_is_an_application_named_after_its_platform():
    apps = _render(
        platform_app(
            "platform",
            "/",
            [vllm_model("chat"), vision_model("a", "pair"), vision_model("b", "pair")],
            groups=[{"name": "pair"}],
            api_keys=[{"name": "k", "key_env": "K"}],
            router={"max_request_bytes": 1024},
        )
    )
    assert set(apps) == {"platform", "platform.chat", "platform.pair"}
    router = apps["platform"]
    assert router.import_path == "builders.app_builder:build_router" and "models" not in router.args
    chat, pair = apps["platform.chat"], apps["platform.pair"]
    assert chat.route_prefix == "/models/chat"  # vLLM answers HTTP on its own replicas
    assert pair.route_prefix is None  # a group is one application; it has no HTTP route
    assert [m["model_loading_config"]["model_id"] for m in pair.args["models"]] == ["a", "b"]
    for app in (chat, pair):
        assert app.import_path == "builders.app_builder:build_model_app"
        assert app.args["platform_app"] == "platform" and "api_keys" not in app.args
        assert app.args["router"] == {"max_request_bytes": 1024}
    # the replicas that check keys get the entries (never a value) as their user_config
    keys = {"api_keys": [{"name": "k", "key_env": "K"}]}
    assert chat.deployments[0].user_config["key_sources"] == keys
    assert (
        router.deployments[0].user_config["key_sources"] == keys and "api_keys" not in router.args
    )
    assert not pair.deployments  # no HTTP of its own: the router checks its requests' keys
    # closed until that user_config has arrived
    assert router.args["keys_in_user_config"] and chat.args["keys_in_user_config"]
    assert "keys_in_user_config" not in pair.args


def test_adding_or_removing_a_key_entry_changes_no_applications_args():
    """Serve restarts an application whose args change: a key entry added or revoked reaches the
    running router and one-hop replicas as their user_config instead (a reconfigure)."""

    def rendered(*entries: dict) -> dict:
        return _render(
            platform_app("p", "/", [vllm_model("chat"), vision_model("v")], api_keys=list(entries))
        )

    one = rendered({"name": "a", "key_env": "A"})
    two = rendered(
        {"name": "a", "key_env": "A"}, {"name": "b", "key_file": "/k", "models": ["chat"]}
    )
    assert {name: app.args for name, app in one.items()} == {
        name: app.args for name, app in two.items()
    }
    assert two["p.chat"].deployments[0].user_config["key_sources"]["api_keys"][1]["name"] == "b"


def test_a_platform_may_share_its_name_with_a_model_and_its_models_with_another_platform():
    apps = _render(
        platform_app("chat", "/a", [vllm_model("chat")]),
        platform_app("other", "/b", [vllm_model("chat")]),
    )
    assert set(apps) == {"chat", "chat.chat", "other", "other.chat"}
    assert (
        apps["chat.chat"].route_prefix == "/a/models/chat"
        and apps["other.chat"].route_prefix == "/b/models/chat"
    )


def test_a_rendered_clash_is_a_config_error_before_anything_starts(tmp_path, capsys):
    # The platform "p" at "/a" and a second platform named like p's rendered model application.
    path = tmp_path / "clash.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    platform_app("p", "/a", [vllm_model("x")]),
                    platform_app("p.x", "/b", [vision_model("y")]),
                ]
            }
        )
    )
    assert main(["--config", str(path), "--render"]) == 1
    error = capsys.readouterr().err
    assert 'multiple configs for application "p.x"' in error and "see --render" in error


@pytest.mark.parametrize("route_prefix,expected", [("/", "/models/m"), ("/api/", "/api/models/m")])
def test_the_one_hop_prefix_sits_under_the_platform_route(route_prefix, expected):
    assert (
        _render(platform_app("p", route_prefix, [vllm_model("m")]))["p.m"].route_prefix == expected
    )


def test_the_request_timeout_reaches_a_one_hop_replica_outside_its_args():
    """Serve versions an application by its args: the timeout rides in the deployment's
    user_config instead, so editing it reconfigures the replicas without restarting them."""

    def chat_app(timeout_s: float):
        apps = _render(
            platform_app(
                "p",
                "/",
                [vllm_model("chat"), vision_model("v")],
                router={"request_timeout_s": timeout_s},
            )
        )
        assert not apps[
            "p.v"
        ].deployments  # no HTTP path of its own: the router's timeout covers it
        return apps["p.chat"]

    short, long = chat_app(0.5), chat_app(30)
    assert [(d.name, d.user_config) for d in short.deployments] == [
        ("chat", {"request_timeout_s": 0.5, "key_sources": {}})
    ]
    assert long.deployments[0].user_config == {"request_timeout_s": 30, "key_sources": {}}
    assert short.args == long.args


def test_the_config_files_name_reaches_the_router_alone():
    raw = {
        "applications": [
            {
                **platform_app("platform", "/", [vllm_model("chat")]),
                "runtime_env": {"env_vars": {"A": "1"}},
            }
        ]
    }
    _, loaded = validate_serve_config(raw)
    apps = {
        app.name: app
        for app in rendered_schema(
            render_serve_config(raw, loaded, "model_config.yaml")
        ).applications
    }
    assert apps["platform"].runtime_env["env_vars"] == {
        "A": "1",
        "PLATFORM_CONFIG_FILE": "model_config.yaml",
    }
    assert apps["platform.chat"].runtime_env["env_vars"] == {
        "A": "1"
    }  # renaming the file restarts no model
    assert raw["applications"][0]["runtime_env"]["env_vars"] == {"A": "1"}


def test_a_vllm_application_is_stamped_with_the_vllm_that_checked_its_engine_kwargs(monkeypatch):
    """Its build, in a fresh process, then skips importing vLLM (seconds of CPU per model)."""
    from configs import ConfigError, load_platform_config
    from configs.vllm_models import installed_vllm

    apps = _render(platform_app("p", "/", [vllm_model("chat"), vision_model("v")]))
    assert apps["p.chat"].args["engine_kwargs_checked_by"] == installed_vllm() is not None
    assert (
        "engine_kwargs_checked_by" not in apps["p.v"].args
    )  # an upgrade of vLLM restarts no other model

    misspelt = {
        "models": [{**vllm_model("chat"), "engine_kwargs": {"max_num_seqz": 4}}],
        "platform_app": "p",
    }
    with pytest.raises(ConfigError, match=r"models\[0\]\.engine_kwargs\.max_num_seqz: unknown key"):
        load_platform_config(
            {**misspelt, "engine_kwargs_checked_by": "vllm==0.0.1"}
        )  # another vLLM: checked
    imported = []
    monkeypatch.setattr("configs.vllm_models.vllm_engine_kwargs_model", lambda: imported.append(1))
    load_platform_config(
        {**misspelt, "engine_kwargs_checked_by": installed_vllm()}
    )  # this vLLM: already checked
    assert imported == []
