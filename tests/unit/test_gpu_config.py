"""GPU shares and model parallelism of vLLM entries: checked and derived before deploy."""

import pytest

from configs import ConfigError, load_platform_config


def vllm_entry(num_gpus=None, **engine_kwargs) -> dict:
    actor = {} if num_gpus is None else {"num_gpus": num_gpus}
    return {
        "models": [
            {
                "model_loading_config": {
                    "model_id": "m",
                    "model_source": "org/model",
                    "type": "vllm",
                },
                "deployment_config": {"ray_actor_options": actor},
                "engine_kwargs": engine_kwargs,
            }
        ]
    }


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


def test_parallel_models_get_one_bundle_per_shard():
    options = load(tensor_parallel_size=2, pipeline_parallel_size=2).serve_options()
    assert (
        options["ray_actor_options"]["num_gpus"] == 0
    )  # vLLM's workers hold the GPUs, not the replica
    assert options["placement_group_bundles"] == [{"CPU": 1, "GPU": 1}] + [{"GPU": 1}] * 3
    assert options["placement_group_strategy"] == "PACK"  # pipeline stages may span nodes
    tp_only = load(2, tensor_parallel_size=2).serve_options()
    assert (
        len(tp_only["placement_group_bundles"]) == 2
        and tp_only["placement_group_strategy"] == "STRICT_PACK"
    )
    assert "placement_group_bundles" not in load(1).serve_options()


def test_tensor_parallel_zero_means_every_gpu_of_the_replica():
    entry = load(4, tensor_parallel_size=0, pipeline_parallel_size=2)
    assert entry.world_size() == 4 and entry.engine_overrides()["tensor_parallel_size"] == 2
    assert len(entry.serve_options()["placement_group_bundles"]) == 4
    assert (
        load(0.4, tensor_parallel_size=0).engine_overrides()["tensor_parallel_size"] == 1
    )  # the seed's "auto"


def test_a_strategy_from_the_yaml_and_explicit_bundles_are_kept():
    raw = vllm_entry(2, tensor_parallel_size=2)
    raw["models"][0]["deployment_config"]["placement_group_strategy"] = "SPREAD"
    assert (
        load_platform_config(raw).models[0].serve_options()["placement_group_strategy"] == "SPREAD"
    )
    bundles = [{"CPU": 2, "GPU": 1}, {"GPU": 1, "CPU": 1}]
    raw["models"][0]["deployment_config"]["placement_group_bundles"] = bundles
    assert load_platform_config(raw).models[0].serve_options()["placement_group_bundles"] == bundles


@pytest.mark.parametrize(
    "num_gpus,engine_kwargs,message",
    [
        (1, {"tensor_parallel_size": 4}, "needs 4 GPUs"),
        (2, {}, "tensor_parallel_size: 2"),
        (
            3,
            {"tensor_parallel_size": 0, "pipeline_parallel_size": 2},
            "not a multiple of pipeline_parallel_size",
        ),
    ],
)
def test_parallelism_that_does_not_match_the_gpus_is_refused(num_gpus, engine_kwargs, message):
    with pytest.raises(ConfigError) as info:
        load(num_gpus, **engine_kwargs)
    assert message in str(info.value) and "models[0]" in str(info.value)
