"""The vLLM engine's own checks, without starting vLLM."""

import pytest

from configs import load_platform_config
from servers.vllm_engine import VLLMEngine, _typed


def _engine(**engine_kwargs) -> VLLMEngine:
    args = {
        "models": [
            {
                "model_loading_config": {"model_id": "m", "model_source": "org/m", "type": "vllm"},
                "engine_kwargs": engine_kwargs,
            }
        ]
    }
    return VLLMEngine(load_platform_config(args).models[0])


@pytest.mark.parametrize(
    "engine_kwargs,resolved",
    [
        ({}, None),
        ({"runner": "pooling"}, "embed"),
        ({"runner": "pooling", "convert": "classify"}, "classify"),
    ],
)
def test_a_model_vllm_serves_as_declared_starts(engine_kwargs, resolved):
    _engine(**engine_kwargs)._check_pooling_task(resolved)


@pytest.mark.parametrize(
    "engine_kwargs,resolved,fix",
    [
        (
            {"runner": "pooling"},
            "classify",
            "convert: classify",
        ),  # a cross-encoder declared as an embedder
        ({}, "embed", "convert: embed"),
        ({"runner": "pooling"}, None, "runner: generate"),
    ],
)
def test_a_model_vllm_serves_otherwise_fails_its_start_saying_what_to_set(
    engine_kwargs, resolved, fix
):
    with pytest.raises(ValueError, match=fix):
        _engine(**engine_kwargs)._check_pooling_task(resolved)


def test_nested_engine_configs_reach_vllm_as_the_dataclasses_it_expects():
    """A YAML mapping for a config vLLM types as a dataclass (``structured_outputs_config``) is
    built into one; plain mappings (``limit_mm_per_prompt``) and scalars pass as they are."""
    from vllm.config import StructuredOutputsConfig

    typed = _typed(
        {
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
            "limit_mm_per_prompt": {"image": 2},
            "max_num_seqs": 4,
        }
    )
    config = typed["structured_outputs_config"]
    assert isinstance(config, StructuredOutputsConfig) and config.disable_any_whitespace
    assert typed["limit_mm_per_prompt"] == {"image": 2} and typed["max_num_seqs"] == 4
