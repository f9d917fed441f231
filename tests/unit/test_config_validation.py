"""Bad configs fail before anything is deployed, naming the YAML path and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from builders.serve_config import load_serve_config
from common.config_errors import ConfigError
from configs import load_platform_config

ROOT = Path(__file__).resolve().parents[2]

SEED_CONFIG = yaml.safe_load("""
applications:
  - name: "falcon3-1b-instruct-app"
    import_path: "builders.app_builder:build_app"
    route_prefix: "/falcon3-1b"
    args:
      llm_configs:
        - model_loading_config:
            model_id: "falcon3-1b-instruct"
            model_source: "tiiuae/Falcon3-1B-Instruct"
            type: "VLLM"
          deployment_config:
            name: "falcon3-1b-deployment"
            ray_actor_options:
              num_cpus: 1
              num_gpus: 0.4
            autoscaling_config:
              min_replicas: 1
              max_replicas: 1
              target_ongoing_requests: 50
            max_ongoing_requests: 256
          engine_kwargs:
            tensor_parallel_size: 0
            dtype: "float16"
            gpu_memory_utilization: 0.4
            max_model_len: 8192
            enforce_eager: false
            max_num_seqs: 256
            max_num_batched_tokens: 32768
            trust_remote_code: true
            disable_custom_all_reduce: true
""")


def good_args() -> dict:
    return {
        "models": [
            {
                "model_loading_config": {
                    "model_id": "chat",
                    "model_source": "org/model",
                    "type": "vllm",
                },
                "deployment_config": {"ray_actor_options": {"num_cpus": 1}},
                "engine_kwargs": {"max_model_len": 512, "max_num_seqs": 8},
            }
        ]
    }


def test_seed_config_validates_with_our_import_path():
    config = load_platform_config(SEED_CONFIG["applications"][0]["args"])
    model = config.models[0]
    assert model.model_id == "falcon3-1b-instruct"
    assert [c.value for c in model.capabilities()] == [
        "chat",
        "completions",
        "tokenize",
        "detokenize",
    ]
    options = model.serve_options()
    assert options["name"] == "falcon3-1b-deployment"
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.4}
    assert options["max_ongoing_requests"] == 256
    assert options["autoscaling_config"]["target_ongoing_requests"] == 50


@pytest.mark.parametrize(
    "engine_kwargs,capabilities",
    [
        ({}, ["chat", "completions"]),
        (
            {"runner": "pooling"},
            ["embeddings", "rerank", "score"],
        ),  # vLLM scores embedders by cosine
        ({"runner": "pooling", "convert": "embed"}, ["embeddings", "rerank", "score"]),
        ({"convert": "classify"}, ["rerank", "score", "classify"]),  # a cross-encoder
    ],
)
def test_a_vllm_models_endpoints_follow_its_pooling_task(engine_kwargs, capabilities):
    args = good_args()
    args["models"][0]["engine_kwargs"].update(engine_kwargs)
    model = load_platform_config(args).models[0]
    assert [c.value for c in model.capabilities()] == capabilities + ["tokenize", "detokenize"]


def test_vllm_models_get_a_queue_that_matches_max_num_seqs():
    options = load_platform_config(good_args()).models[0].serve_options()
    assert options["max_ongoing_requests"] == 8
    args = good_args()
    del args["models"][0]["engine_kwargs"]["max_num_seqs"]
    assert load_platform_config(args).models[0].serve_options()["max_ongoing_requests"] == 256


def _mutate(path: str, value, delete: bool = False):
    def apply(args: dict) -> dict:
        target = args
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target.setdefault(key, {})
        last = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
        if delete:
            del target[last]
        else:
            target[last] = value
        return args

    return apply


def _duplicate_model(args: dict) -> dict:
    args["models"].append(copy.deepcopy(args["models"][0]))
    return args


BAD_CONFIGS = [
    (
        "unknown type",
        _mutate("models.0.model_loading_config.type", "tensorflow"),
        "models[0].model_loading_config.type",
        "unknown model type 'tensorflow'; allowed: vllm, audio",
    ),
    (
        "missing model_source",
        _mutate("models.0.model_loading_config.model_source", None, delete=True),
        "models[0].model_loading_config.model_source",
        "required field is missing",
    ),
    (
        "missing model_id",
        _mutate("models.0.model_loading_config.model_id", None, delete=True),
        "models[0].model_loading_config.model_id",
        "required field is missing",
    ),
    (
        "duplicate model_id",
        _duplicate_model,
        "models[1].model_loading_config.model_id",
        "duplicate model_id 'chat'",
    ),
    (
        "misspelt engine key",
        _mutate("models.0.engine_kwargs.max_num_seq", 4),
        "models[0].engine_kwargs.max_num_seq",
        "did you mean 'max_num_seqs'?",
    ),
    (
        "engine key of wrong type",
        _mutate("models.0.engine_kwargs.max_model_len", "long"),
        "models[0].engine_kwargs.max_model_len",
        "valid integer",
    ),
    (
        "engine enum value",
        _mutate("models.0.engine_kwargs.dtype", "float8"),
        "models[0].engine_kwargs.dtype",
        "'bfloat16'",
    ),
    (
        "platform-owned engine key",
        _mutate("models.0.engine_kwargs.model", "x"),
        "models[0].engine_kwargs",
        "set from model_loading_config.model_source",
    ),
    (
        "negative replicas",
        _mutate("models.0.deployment_config.num_replicas", -1),
        "models[0].deployment_config.num_replicas",
        "greater than or equal to 1",
    ),
    (
        "negative gpus",
        _mutate("models.0.deployment_config.ray_actor_options.num_gpus", -0.5),
        "models[0].deployment_config.ray_actor_options.num_gpus",
        "greater than or equal to 0",
    ),
    (
        "fractional gpus above one",
        _mutate("models.0.deployment_config.ray_actor_options.num_gpus", 1.5),
        "models[0].deployment_config.ray_actor_options.num_gpus",
        "whole number",
    ),
    (
        "misspelt actor option",
        _mutate("models.0.deployment_config.ray_actor_options.num_gpu", 1),
        "models[0].deployment_config.ray_actor_options.num_gpu",
        "did you mean 'num_gpus'?",
    ),
    (
        "replicas and autoscaling",
        _mutate(
            "models.0.deployment_config",
            {"num_replicas": 2, "autoscaling_config": {"max_replicas": 2}},
        ),
        "models[0].deployment_config",
        "num_replicas or autoscaling_config",
    ),
    (
        "min above max replicas",
        _mutate(
            "models.0.deployment_config.autoscaling_config", {"min_replicas": 3, "max_replicas": 2}
        ),
        "models[0].deployment_config.autoscaling_config",
        "min_replicas (3) is above max_replicas (2)",
    ),
    (
        "zero max_ongoing_requests",
        _mutate("models.0.deployment_config.max_ongoing_requests", 0),
        "models[0].deployment_config.max_ongoing_requests",
        "greater than or equal to 1",
    ),
    (
        "unknown top-level key",
        _mutate("api_key", "secret"),
        "args.api_key",
        "did you mean 'api_keys'?",
    ),
    (
        "missing local path",
        _mutate("models.0.model_loading_config.model_source", "./no/such/dir"),
        "models[0].model_loading_config.model_source",
        "does not exist",
    ),
    (
        "wildcard CORS with credentials",
        _mutate("cors", {"allow_origins": ["*"], "allow_credentials": True}),
        "args.cors",
        "list the origins explicitly",
    ),
    ("model entry not a mapping", _mutate("models.0", "chat"), "models[0]", "valid dictionary"),
    ("empty models", _mutate("models", []), "args.models", "at least 1 item"),
    (
        "router memory below one upload",
        lambda args: _mutate("router.max_upload_memory_bytes", 64 * 1024 * 1024)(
            _mutate(
                "models.0",
                {
                    "model_loading_config": {
                        "model_id": "asr",
                        "model_source": "org/whisper",
                        "type": "audio",
                    },
                    "engine_kwargs": {"task": "speech-to-text"},
                },
            )(args)
        ),
        "args.router.max_upload_memory_bytes",
        "cannot hold one of the largest uploads of models[0] ('asr'",
    ),
]


@pytest.mark.parametrize(
    "mutate,path,message", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_names_the_field(mutate, path, message):
    with pytest.raises(ConfigError) as info:
        load_platform_config(mutate(good_args()))
    text = str(info.value)
    assert path in text, text
    assert message in text, text


def test_all_problems_are_reported_at_once():
    args = good_args()
    args["models"][0]["engine_kwargs"]["max_num_seq"] = 4
    args["models"][0]["deployment_config"]["num_replicas"] = 0
    with pytest.raises(ConfigError) as info:
        load_platform_config(args)
    assert len(info.value.issues) == 2


def test_serve_file_errors_carry_the_application_path(tmp_path):
    bad = copy.deepcopy(SEED_CONFIG)
    bad["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]["max_num_seq"] = 4
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as info:
        load_serve_config(str(path))
    assert "applications[0].args.llm_configs[0].engine_kwargs.max_num_seq" in str(info.value)


@pytest.mark.parametrize(
    "name", ["model_config.yaml", "examples/production.yaml", "examples/vision-language.yaml"]
)
def test_shipped_configs_validate(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("PLATFORM_API_KEYS", raising=False)  # validating needs no secret
    _, loaded = load_serve_config(str(ROOT / name))
    assert loaded and all(config.models for config in loaded.values())


def test_secrets_are_needed_where_the_platform_serves_not_where_it_is_planned(monkeypatch, capsys):
    from builders.app_builder import build_model_app, build_router
    from deploy_app import main

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("PLATFORM_API_KEYS", raising=False)
    config = "examples/production.yaml"
    assert main(["--config", config, "--plan", "--nodes", "4"]) == 0
    assert main(["--config", config, "--render"]) == 0
    assert main(["--config", config]) == 1  # would start a Ray here that serves with no key
    assert (
        "api_keys_env names 'PLATFORM_API_KEYS', which is not set here" in capsys.readouterr().err
    )
    args = yaml.safe_load(open(config))["applications"][0]["args"]
    for build in (
        lambda: build_router({"api_keys_env": "PLATFORM_API_KEYS"}),
        lambda: build_model_app({**args, "models": args["models"][:1], "groups": []}),
    ):
        with pytest.raises(ConfigError, match=r"args\.api_keys_env: api_keys_env names"):
            build()


def test_every_deployment_gets_a_bounded_queue_unless_the_yaml_sets_one():
    args = good_args()
    chat = args["models"][0]
    chat["engine_kwargs"]["max_num_seqs"] = 16
    chat["deployment_config"]["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 4}
    specs = {spec.name: spec.options for spec in load_platform_config(args).deployments()}
    assert specs[chat["model_loading_config"]["model_id"]]["max_queued_requests"] == 2 * 16 * 4
    chat["deployment_config"]["max_queued_requests"] = -1  # the operator's choice: unbounded
    specs = {spec.name: spec.options for spec in load_platform_config(args).deployments()}
    assert specs[chat["model_loading_config"]["model_id"]]["max_queued_requests"] == -1


def test_a_models_constructor_retries_reach_its_deployment():
    """``max_constructor_retry_count`` is Serve's: how often a replica that cannot load is started
    again before the model is marked failed; unset, Serve's own default stays."""
    from builders.app_builder import build_model_app

    args = good_args()
    chat = args["models"][0]
    model_id = chat["model_loading_config"]["model_id"]
    specs = {spec.name: spec.options for spec in load_platform_config(args).deployments()}
    assert "max_constructor_retry_count" not in specs[model_id]
    chat["deployment_config"]["max_constructor_retry_count"] = 2
    app = build_model_app({"models": [chat], "platform_app": "p"})
    assert app._bound_deployment._deployment_config.max_constructor_retry_count == 2
    chat["deployment_config"]["max_constructor_retry_count"] = 0
    with pytest.raises(ConfigError, match=r"deployment_config\.max_constructor_retry_count"):
        load_platform_config(args)


def test_keys_are_named_and_read_from_env_or_files_never_inline(tmp_path, monkeypatch):
    from configs import load_platform_settings, require_secrets

    with pytest.raises(
        ConfigError, match=r"args\.api_keys: .*api_keys\[0\] is a key written in the config"
    ):
        load_platform_settings({"api_keys": ["sk-inline"]})
    with pytest.raises(ConfigError, match=r"args\.api_keys\[0\]: .*exactly one of key_env"):
        load_platform_settings({"api_keys": [{"name": "a", "key_env": "A", "key_file": "/x"}]})
    key_file = tmp_path / "team-b"
    key_file.write_text("sk-from-file-0123456789\n")
    settings = load_platform_settings(
        {
            "api_keys": [
                {"name": "team-a", "key_env": "TEAM_A_KEY", "models": ["tiny-chat"]},
                {"name": "team-b", "key_file": str(key_file)},
            ]
        }
    )
    monkeypatch.delenv("TEAM_A_KEY", raising=False)
    with pytest.raises(ConfigError, match="'TEAM_A_KEY' is not set here"):
        require_secrets(settings)
    monkeypatch.setenv("TEAM_A_KEY", "sk-from-env-0123456789")
    require_secrets(settings)
    keys = {key.name: key for key in settings.resolved_api_keys()}
    assert keys["team-a"].secret == "sk-from-env-0123456789"
    assert keys["team-b"].secret == "sk-from-file-0123456789"
    assert keys["team-a"].allows("tiny-chat:sql") and not keys["team-a"].allows("tiny-vit")
    assert keys["team-b"].allows("anything")


def test_two_keys_of_one_name_are_refused_naming_both():
    from configs import load_platform_settings

    entries = [{"name": "team", "key_env": "A"}, {"name": "x", "key_env": "B"}]
    with pytest.raises(ConfigError, match=r"api_keys\[0\] and api_keys\[2\] are both named 'team'"):
        load_platform_settings({"api_keys": [*entries, {"name": "team", "key_file": "/k"}]})


def test_short_keys_and_one_key_from_two_sources_are_refused_where_the_platform_serves(
    tmp_path, monkeypatch
):
    from configs import load_platform_settings, require_secrets

    scoped = tmp_path / "scoped.key"
    scoped.write_text("k" * 20)
    settings = load_platform_settings(
        {
            "api_keys_env": "ALL_KEYS",
            "api_keys": [{"name": "scoped", "key_file": str(scoped), "models": ["chat"]}],
        }
    )
    # the scoped key again among the keys for every model: whichever matched last would win,
    # dropping the scope
    monkeypatch.setenv("ALL_KEYS", f"{'a' * 16},{'k' * 20}")
    with pytest.raises(ConfigError) as info:
        require_secrets(settings)
    assert "args.api_keys_env: api_keys[0] (scoped) and key 2 of ALL_KEYS hold the same key" in str(
        info.value
    )
    monkeypatch.setenv("ALL_KEYS", "short-key")
    with pytest.raises(
        ConfigError, match="key 1 of ALL_KEYS is 9 characters; a key needs at least 16"
    ):
        require_secrets(settings)
    monkeypatch.setenv("ALL_KEYS", "a" * 16)
    require_secrets(settings)


def test_no_repr_of_a_key_or_the_router_settings_holds_its_secret():
    from configs.api_keys import APIKey
    from serve.router.routing import RouterSettings

    key = APIKey("sk-very-secret-value-1234", "team", ("chat",))
    settings = RouterSettings(routes={}, api_keys=(key,))
    assert "sk-very-secret" not in repr(key) and "sk-very-secret" not in repr(settings)
    assert "team" in repr(key)
