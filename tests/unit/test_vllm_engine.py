"""The vLLM engine's own checks, without starting vLLM."""

import pytest

from configs import load_platform_config
from servers.vllm_engine import VLLMEngine


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
