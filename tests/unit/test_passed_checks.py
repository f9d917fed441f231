"""A vLLM model's ``engine_kwargs`` are checked against vLLM's ``EngineArgs`` once per vLLM: what
passed is remembered on disk (importing vLLM costs seconds on every apply and every ``--watch``
save); what was refused is checked, and refused, each time."""

import pytest

from common.config_errors import ConfigError
from configs import load_platform_config
from configs.vllm_models import VLLMModelEntry


def _args(**engine_kwargs) -> dict:
    return {
        "models": [
            {
                "model_loading_config": {
                    "model_id": "chat",
                    "model_source": "org/m",
                    "type": "vllm",
                },
                "engine_kwargs": {"max_model_len": 512, **engine_kwargs},
            }
        ]
    }


@pytest.fixture
def checks(monkeypatch, tmp_path) -> list[str]:
    """Each build of the check's model, counted; the cache in a directory of this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[str] = []
    check = VLLMModelEntry.engine_kwargs_model

    def counted(cls):
        calls.append(cls.engine_kwargs_checker())
        return check()

    monkeypatch.setattr(VLLMModelEntry, "engine_kwargs_model", classmethod(counted))
    return calls


def test_engine_kwargs_that_passed_are_not_checked_again_until_they_change(checks):
    load_platform_config(_args(max_num_seqs=8))
    load_platform_config(_args(max_num_seqs=8))
    assert len(checks) == 1
    load_platform_config(_args(max_num_seqs=16))
    assert len(checks) == 2
    load_platform_config(_args(max_num_seqs="16"))  # another type: another check
    assert len(checks) == 3


def test_refused_engine_kwargs_are_refused_each_time(checks):
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"engine_kwargs\.max_num_seq\b"):
            load_platform_config(_args(max_num_seq=8))
    assert len(checks) == 2


def test_another_vllm_checks_them_again(checks, monkeypatch):
    load_platform_config(_args())
    monkeypatch.setattr(
        VLLMModelEntry, "engine_kwargs_checker", classmethod(lambda cls: "vllm==0.0.1")
    )
    load_platform_config(_args())
    assert checks[-1] == "vllm==0.0.1" and len(checks) == 2


def test_without_a_writable_cache_every_load_checks(checks, monkeypatch, tmp_path):
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-directory"))
    load_platform_config(_args())
    load_platform_config(_args())
    assert len(checks) == 2


@pytest.mark.parametrize(
    "before,after",
    [
        ({"limit_mm_per_prompt": {"1": 2}}, {"limit_mm_per_prompt": {1: 2}}),
        ({"limit_mm_per_prompt": {"true": 2}}, {"limit_mm_per_prompt": {True: 2}}),
        ({"max_num_seqs": 1}, {"max_num_seqs": True}),
        ({"max_num_seqs": 1}, {"max_num_seqs": 1.0}),
    ],
)
def test_values_json_would_spell_alike_are_checked_apart(checks, before, after):
    load_platform_config(_args(**before))
    try:
        load_platform_config(_args(**after))
    except ConfigError:
        pass  # refused, as the check said: what matters is that it ran
    assert len(checks) == 2
