"""Multiplexed variants in the YAML: found, checked and turned into vLLM LoRA settings before
deploy."""

import pytest

from configs import ConfigError, load_platform_config
from tests.lora_files import lora_adapter


def _load(model_type, multiplex_config, engine_kwargs=None):
    entry = {
        "model_loading_config": {"model_id": "m", "model_source": "org/model", "type": model_type},
        "multiplex_config": multiplex_config,
        "engine_kwargs": engine_kwargs or {},
    }
    if model_type == "vision":
        entry["engine_kwargs"] = {"task": "image-classification", **entry["engine_kwargs"]}
    return load_platform_config({"models": [entry]}).models[0]


def test_variants_dir_and_listed_variants(tmp_path):
    lora_adapter(tmp_path / "lora" / "sql")
    lora_adapter(tmp_path / "lora" / "poet", rank=32)
    (tmp_path / "lora" / ".cache").mkdir()
    model = _load(
        "vllm", {"variants_dir": str(tmp_path / "lora"), "variants": {"hub": "org/adapter"}}
    )
    assert set(model.variants()) == {"sql", "poet", "hub"}
    assert model.lora_modules()["m:sql"] == str(tmp_path / "lora" / "sql")
    overrides = model.engine_overrides()
    assert overrides == {
        "enable_lora": True,
        "max_loras": 3,
        "max_cpu_loras": 3,
        "max_lora_rank": 32,
    }


def test_lora_settings_from_the_yaml_win(tmp_path):
    lora_adapter(tmp_path / "sql")
    model = _load(
        "vllm",
        {"variants": {"sql": str(tmp_path / "sql")}, "max_variants_per_replica": 1},
        {"max_lora_rank": 64},
    )
    assert model.engine_overrides() == {"enable_lora": True, "max_loras": 1, "max_cpu_loras": 1}


@pytest.mark.parametrize(
    "model_type,multiplex,message",
    [
        ("vllm", {"variants": {"sql": "./no/such/adapter"}}, "variants: variant 'sql': local path"),
        ("vllm", {"variants_dir": "./no/such/dir"}, "variants_dir"),
        ("vllm", {}, "no variants"),
        ("vision", {"variants": {"bad name": "org/x"}}, "variant name 'bad name'"),
        (
            "vision",
            {"variants": {"a": "org/x"}, "max_variants_per_replica": 0},
            "max_variants_per_replica",
        ),
    ],
)
def test_bad_variants_fail_before_deploy_naming_the_field(model_type, multiplex, message):
    with pytest.raises(ConfigError) as info:
        _load(model_type, multiplex)
    assert "models[0].multiplex_config" in str(info.value) and message in str(info.value)


def test_a_vllm_variant_must_be_a_lora_adapter(tmp_path):
    (tmp_path / "full-model").mkdir()
    (tmp_path / "full-model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is not a LoRA adapter"):
        _load("vllm", {"variants": {"x": str(tmp_path / "full-model")}})
    lora_adapter(tmp_path / "huge", rank=1024)
    with pytest.raises(ConfigError, match="ranks up to 512"):
        _load("vllm", {"variants": {"x": str(tmp_path / "huge")}})
