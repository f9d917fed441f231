"""Co-located model groups: one deployment per group, options from the group, clear refusals."""

import pytest

from builders.placement import plan
from configs import ConfigError, load_platform_config


def _vision(model_id, group=None, **extra):
    entry = {
        "model_loading_config": {"model_id": model_id, "model_source": "org/vit", "type": "vision"},
        "engine_kwargs": {"task": "image-classification", "max_batch_size": 4},
        **extra,
    }
    return {**entry, "group": group} if group else entry


def _args(*models, groups=None):
    return {
        "models": list(models),
        "groups": groups
        if groups is not None
        else [
            {
                "name": "small",
                "deployment_config": {"ray_actor_options": {"num_cpus": 1, "num_gpus": 0.25}},
            }
        ],
    }


def test_a_group_is_one_deployment_holding_its_models():
    config = load_platform_config(_args(_vision("a", "small"), _vision("b", "small"), _vision("c")))
    specs = {spec.name: spec for spec in config.deployments()}
    assert set(specs) == {"c", "small"}
    assert [m.model_id for m in specs["small"].models] == ["a", "b"]
    assert specs["small"].options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.25}
    assert specs["small"].options["max_ongoing_requests"] == 2 * 16 * 4  # both members' queues
    assert {m.deployment_name for m in config.models} == {"small", "c"}
    placements = plan({"app": config}, nodes=1, gpus_per_node=1, cpus_per_node=4)
    assert [(p.deployment, p.gpu_ids) for p in placements if p.gpu_ids] == [("small", (0,))]


@pytest.mark.parametrize(
    "models,groups,loc,message",
    [
        ([_vision("a", "nope")], None, "models[0].group", "unknown group 'nope'; groups: small"),
        (
            [_vision("a", "small", deployment_config={"num_replicas": 2})],
            None,
            "models[0].deployment_config",
            "move these options to the group",
        ),
        (
            [
                {
                    "model_loading_config": {
                        "model_id": "llm",
                        "model_source": "org/llm",
                        "type": "vllm",
                    },
                    "group": "small",
                }
            ],
            None,
            "models[0].group",
            "vLLM models cannot join a group",
        ),
        (
            [_vision("a", "small", multiplex_config={"variants": {"x": "org/x"}})],
            None,
            "models[0].multiplex_config",
            "cannot have variants",
        ),
        ([_vision("a")], None, "groups[0]", "group 'small' has no models"),
        (
            [_vision("a", "g"), _vision("g")],
            [{"name": "g"}],
            "groups[0].name",
            "also a model's deployment name",
        ),
        (
            [_vision("a", "g")],
            [{"name": "g"}, {"name": "g"}],
            "groups[1].name",
            "duplicate group 'g'",
        ),
    ],
)
def test_bad_groups_are_refused_naming_the_field(models, groups, loc, message):
    with pytest.raises(ConfigError) as info:
        load_platform_config(_args(*models, groups=groups))
    assert f"args.{loc}" in str(info.value) and message in str(info.value)
