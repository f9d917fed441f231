"""Planning where replicas land: GPU shares packed, multi-GPU replicas on one node, clear
refusals."""

import pytest

from builders.placement import PlacementError, plan
from configs import load_platform_config


def config(*models):
    return {"platform": load_platform_config({"models": list(models)})}


def vllm(model_id, num_gpus, replicas=1, **engine_kwargs):
    return {
        "model_loading_config": {"model_id": model_id, "model_source": "org/m", "type": "vllm"},
        "deployment_config": {
            "num_replicas": replicas,
            "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": 1},
        },
        "engine_kwargs": engine_kwargs,
    }


def test_two_half_shares_share_one_gpu_and_a_tp2_model_holds_two():
    placements = plan(
        config(vllm("a", 0.5), vllm("b", 0.5), vllm("tp", 2, tensor_parallel_size=2)),
        nodes=1,
        gpus_per_node=4,
        cpus_per_node=8,
    )
    by_model = {p.deployment: p for p in placements}
    assert by_model["a"].gpu_ids == by_model["b"].gpu_ids
    assert len(by_model["tp"].gpu_ids) == 2 and not set(by_model["tp"].gpu_ids) & set(
        by_model["a"].gpu_ids
    )


def test_replicas_spread_over_nodes_when_one_is_full():
    placements = plan(
        config(vllm("big", 4, replicas=2, tensor_parallel_size=4)),
        nodes=2,
        gpus_per_node=4,
        cpus_per_node=8,
    )
    assert sorted(p.node for p in placements) == [0, 1]


def test_strategies_of_sharded_replicas():
    pipeline = vllm("pp", 4, tensor_parallel_size=2, pipeline_parallel_size=2)
    placements = plan(config(pipeline), nodes=2, gpus_per_node=2, cpus_per_node=8)
    assert (
        placements[0].nodes == (0, 1) and len(placements[0].gpu_ids) == 4
    )  # PACK spills over nodes
    spread = vllm("tp", 2, tensor_parallel_size=2)
    spread["deployment_config"]["placement_group_strategy"] = "STRICT_SPREAD"
    placements = plan(config(spread), nodes=2, gpus_per_node=4, cpus_per_node=8)
    assert placements[0].nodes == (0, 1)
    with pytest.raises(PlacementError, match="does not fit"):
        plan(config(spread), nodes=1, gpus_per_node=4, cpus_per_node=8)


@pytest.mark.parametrize(
    "models,message",
    [
        ((vllm("huge", 8, tensor_parallel_size=8),), "needs 8 GPUs on one node; nodes have 4"),
        (
            (vllm("a", 0.6), vllm("b", 0.6), vllm("c", 0.6), vllm("d", 0.6), vllm("e", 0.6)),
            "e replica 1",
        ),
    ],
)
def test_configs_that_cannot_fit_are_refused_naming_the_replica(models, message):
    with pytest.raises(PlacementError, match=message):
        plan(config(*models), nodes=1, gpus_per_node=4, cpus_per_node=64)
