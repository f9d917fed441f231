"""GPU shares and model parallelism of vLLM entries: checked and derived before deploy."""

import pytest

from configs import ConfigError, load_platform_config


def vllm_entry(num_gpus=None, **engine_kwargs) -> dict:
    actor = {} if num_gpus is None else {"num_gpus": num_gpus}
    return {"models": [{"model_loading_config": {"model_id": "m", "model_source": "org/model", "type": "vllm"},
                        "deployment_config": {"ray_actor_options": actor}, "engine_kwargs": engine_kwargs}]}


def load(num_gpus=None, **engine_kwargs):
    return load_platform_config(vllm_entry(num_gpus, **engine_kwargs)).models[0]


def test_utilization_above_the_share_is_refused_with_what_to_set():
    with pytest.raises(ConfigError) as info:
        load(0.4, gpu_memory_utilization=0.9)
    text = str(info.value)
    assert "models[0]" in text and "gpu_memory_utilization (0.9)" in text and "at most 0.4" in text


def test_a_share_without_utilization_gets_one_that_fits():
    assert load(0.4).engine_overrides() == {"gpu_memory_utilization": 0.36}
    assert load(0.4, gpu_memory_utilization=0.35).engine_overrides() == {}
    assert load(1).engine_overrides() == {} and load().engine_overrides() == {}


def test_parallel_models_hold_one_gpu_per_shard():
    options = load(tensor_parallel_size=2, pipeline_parallel_size=2).serve_options()
    assert options["ray_actor_options"]["num_gpus"] == 4
    assert load(2, tensor_parallel_size=2).serve_options()["ray_actor_options"]["num_gpus"] == 2
    assert "num_gpus" not in load(tensor_parallel_size=0).serve_options()["ray_actor_options"]


def test_parallelism_that_does_not_match_the_gpus_is_refused():
    with pytest.raises(ConfigError) as info:
        load(1, tensor_parallel_size=4)
    assert "needs 4 GPUs" in str(info.value) and "num_gpus: 4" in str(info.value)
