"""A vLLM model's ``routing:``: read from the YAML, refused where it cannot work, turned into the
deployment's request router (Ray's ``PrefixCacheAffinityRouter``, reading the platform's bodies)."""

import json

import pytest
from jsonschema.validators import validator_for
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve._private.request_router.common import PendingRequest

from builders.app_builder import build_model_app
from builders.config_schema import SCHEMA_PATH
from configs import ConfigError, load_platform_config
from serve.deployments.prefix_affinity import (
    PrefixAffinityRouter,
    RoutingDecision,
    UnseenPicks,
    _TreeCalls,
    decision,
    request_router_config,
)


def _entry(model_type="vllm", **extra):
    entry = {
        "model_loading_config": {"model_id": "m", "model_source": "org/m", "type": model_type},
        **extra,
    }
    if model_type == "vision":
        entry["engine_kwargs"] = {"task": "image-classification"}
    return entry


def _load(**extra):
    return load_platform_config({"models": [_entry(**extra)]}).models[0]


def test_default_routing_is_serves_pick_and_leaves_the_engine_alone():
    model = _load()
    assert not model.routing.by_prefix
    assert "enable_prefix_caching" not in model.engine_overrides()
    assert request_router_config(model.routing) is None


@pytest.mark.parametrize(
    "routing,imbalance",
    [("prefix_affinity", 8), ({"policy": "prefix_affinity", "max_imbalance": 2}, 2)],
)
def test_prefix_affinity_turns_on_the_cache_and_rays_router(routing, imbalance):
    model = _load(routing=routing)
    assert model.routing.by_prefix and model.routing.max_imbalance == imbalance
    assert model.engine_overrides()["enable_prefix_caching"] is True
    config = request_router_config(model.routing)
    assert config is not None
    assert config.get_request_router_class() is PrefixAffinityRouter
    assert config.request_router_kwargs == {"imbalanced_threshold": imbalance}


@pytest.mark.parametrize(
    "extra,loc,message",
    [
        (
            {"routing": "prefix_affinity", "engine_kwargs": {"enable_prefix_caching": False}},
            "args.models[0]",
            "enable_prefix_caching is false",
        ),
        ({"routing": "round_robin"}, "args.models[0].routing.policy", "'prefix_affinity'"),
        (
            {"routing": {"policy": "prefix_affinity", "max_imbalance": -1}},
            "args.models[0].routing.max_imbalance",
            "greater than or equal to 0",
        ),
        ({"routing": {"polcy": "default"}}, "args.models[0].routing.polcy", "unknown key"),
    ],
)
def test_refused_routing_names_the_field(extra, loc, message):
    with pytest.raises(ConfigError) as refused:
        _load(**extra)
    assert loc in str(refused.value) and message in str(refused.value)


def test_only_vllm_models_route_by_prefix():
    with pytest.raises(ConfigError, match=r"models\[0\]\.routing"):
        load_platform_config({"models": [_entry("vision", routing="prefix_affinity")]})


def test_the_schema_takes_routing_on_vllm_models_only():
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = validator_for(schema)(schema)

    def errors(*models):
        args = {"models": list(models)}
        config = {"applications": [{"import_path": "builders.app_builder:build_app", "args": args}]}
        return [e.json_path for e in validator.iter_errors(config)]

    assert errors(_entry(routing="prefix_affinity")) == []
    assert errors(_entry(routing={"policy": "prefix_affinity", "max_imbalance": 4})) == []
    assert errors(_entry(routing="nearest")) != []
    assert errors(_entry("vision", routing="default")) != []


def _prompt(*args):
    router = PrefixAffinityRouter.__new__(PrefixAffinityRouter)  # its text reading keeps no state
    request = PendingRequest(args=list(args), kwargs={}, metadata=None, future=None)
    return router._extract_text_from_request(request)


def test_the_router_reads_the_prompt_from_the_platforms_body():
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are terse. "},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
    }
    assert _prompt("m", "chat", chat, "req-1") == "You are terse. Hi"
    assert _prompt("m", "completions", {"prompt": "Once upon"}, None) == "Once upon"


@pytest.mark.parametrize(
    "args",
    [
        (),  # a call without arguments
        ("m", "embeddings", {"input": "text"}, None),  # nothing to match by
        ("m", "completions", {"prompt": [1, 2, 3]}, None),  # token ids only
        ("m", "chat", {"messages": []}, None),
    ],
)
def test_a_call_without_a_prompt_gets_serves_pick(args):
    assert _prompt(*args) is None


@pytest.mark.parametrize("haproxy", [True, False])
def test_a_prefix_routed_model_deploys_with_its_request_router(monkeypatch, haproxy):
    """Behind HAProxy Serve takes a custom request router on the one-hop ingress only beside an
    ingress request router, which HAProxy asks: the model gets one, as a model with variants."""
    from ray.serve._private import constants

    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_HA_PROXY", haproxy)
    app = build_model_app({"models": [_entry(routing="prefix_affinity")], "platform_app": "p"})
    config = app._bound_deployment._deployment_config.request_router_config
    assert config.get_request_router_class() is PrefixAffinityRouter
    router = app._ingress_request_router
    assert (router is not None) == haproxy
    assert router is None or router._bound_deployment.name == "VariantRouter"


@pytest.mark.parametrize("limit", [None, 1])
def test_the_routers_per_node_limit_reaches_its_deployment(limit):
    """``router.max_replicas_per_node`` is Serve's: 1 keeps two routers on two nodes, so /v1
    outlives any one node; unset, Serve's default (no limit)."""
    from builders.app_builder import build_router

    router = {"num_replicas": 2} | ({"max_replicas_per_node": limit} if limit else {})
    app = build_router({"router": router})
    assert app._bound_deployment._replica_config.max_replicas_per_node == limit
    assert app._bound_deployment.num_replicas == 2


def test_a_router_per_node_limit_out_of_serves_range_names_the_field():
    with pytest.raises(ConfigError, match=r"router\.max_replicas_per_node"):
        load_platform_config({"models": [_entry()], "router": {"max_replicas_per_node": 0}})


@pytest.mark.parametrize(
    "has_prompt,chosen,placed_new,made",
    [
        (True, True, False, RoutingDecision.AFFINITY),  # the tree's longest match
        (True, True, True, RoutingDecision.NEW_PREFIX),  # too short a match: smallest tenant
        (True, False, False, RoutingDecision.LOAD),  # queues past the bound: Serve's pick
        (True, False, True, RoutingDecision.LOAD),  # the tree had no tenant to give
        (False, False, False, RoutingDecision.NO_PROMPT),
    ],
)
def test_each_routing_decision_is_counted_as_what_rays_router_did(
    has_prompt, chosen, placed_new, made
):
    assert decision(has_prompt, chosen, placed_new) is made


def test_the_tree_calls_note_whether_the_match_fell_back_to_the_smallest_tenants():
    class Tree:
        def prefix_match(self): ...
        def get_smallest_tenants(self): ...
        def insert(self): ...

    calls = _TreeCalls(Tree())
    calls.get_smallest_tenants()
    assert calls.placed_new
    calls.prefix_match()  # the next request's match starts afresh
    assert not calls.placed_new
    calls.insert()
    assert not calls.placed_new


def test_a_pick_only_request_counts_on_its_replicas_queue_until_haproxy_has_forwarded_it():
    """The one-hop path's burst: each pick weighs on the next ones for ``settle_s``."""
    picks = UnseenPicks(settle_s=1.0)
    a, b = (ReplicaID(unique_id=name, deployment_id=DeploymentID(name="m")) for name in "ab")
    for now, replica in ((10.0, a), (10.1, a), (10.2, b)):
        picks.add(replica, now)
    assert picks.by_replica(10.5) == {a: 2, b: 1}
    assert picks.by_replica(11.15) == {b: 1}  # the first two are in the replica's own count now
    assert picks.by_replica(12.0) == {}
