"""The one-hop path's adapter affinity: which variant a body asks for, and which applications get a
``VariantRouter`` (the routing itself runs against real replicas in
tests/integration/test_variant_affinity.py)."""

import asyncio
import json

import pytest
from starlette.requests import Request

from builders.app_builder import build_model_app
from serve.deployments.variant_router import (
    MAX_ROUTED_BODY_BYTES,
    body_head,
    read_body,
    requested_variant,
)
from tests.lora_files import lora_adapter

VARIANTS = frozenset({"sql", "poet"})


def _variant(body: bytes) -> str:
    return requested_variant(read_body(body)[0], "chat", VARIANTS)


@pytest.mark.parametrize(
    "body,variant",
    [
        ({"model": "chat:sql", "messages": []}, "sql"),
        (
            {
                "messages": [{"role": "user", "content": 'say "model": "chat:poet"'}],
                "model": "chat:poet",
            },
            "poet",
        ),
        ({"model": "chat"}, ""),  # the base model
        ({"model": "chat:nope"}, ""),  # not a variant: vLLM answers its 404 wherever it lands
        ({"model": "chat-2:sql"}, ""),  # another model's name that starts alike
        ({"model": ["chat:sql"]}, ""),
        ({"prompt": "no model"}, ""),
    ],
)
def test_the_variant_a_body_names(body, variant):
    assert _variant(json.dumps(body).encode()) == variant


def test_a_body_cut_at_haproxys_buffer_still_names_its_variant_when_the_model_came_first():
    body = json.dumps(
        {"model": "chat:sql", "messages": [{"role": "user", "content": "x" * 1000}]}
    ).encode()
    assert _variant(body[:200]) == "sql"
    cut_before = json.dumps(
        {"messages": [{"role": "user", "content": 'a "model": "chat:poet" b'}], "model": "chat:sql"}
    ).encode()[:60]
    assert _variant(cut_before) == ""  # only quoted text of a message came
    assert _variant(b"[1, 2]") == "" and _variant(b"") == ""


def test_a_body_no_parser_can_read_gets_no_variant_and_no_error():
    nested = b'{"model": "chat:sql", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert _variant(nested) == "sql"  # the replica answers its 400
    assert _variant(b"\xff\xfe{") == ""


def _model_app(multiplex_config=None):
    entry = {
        "model_loading_config": {"model_id": "chat", "model_source": "org/model", "type": "vllm"},
        "engine_kwargs": {"max_model_len": 256},
    }
    if multiplex_config:
        entry["multiplex_config"] = multiplex_config
    return build_model_app({"models": [entry], "platform_app": "platform"})


def test_only_a_vllm_model_with_variants_gets_a_variant_router_and_only_behind_haproxy(
    tmp_path, monkeypatch
):
    from ray.serve._private import constants

    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_HA_PROXY", False)
    assert (
        _model_app(
            {"variants": {"sql": str(lora_adapter(tmp_path / "plain"))}}
        )._ingress_request_router
        is None
    )
    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_HA_PROXY", True)
    with_variants = _model_app({"variants": {"sql": str(lora_adapter(tmp_path / "sql"))}})
    router = with_variants._ingress_request_router
    assert router is not None and router._bound_deployment.name == "VariantRouter"
    assert router._bound_deployment.ray_actor_options["num_cpus"] == 0
    assert router._bound_deployment.init_args[1:] == ("chat", ["sql"])
    assert _model_app()._ingress_request_router is None


def test_a_body_of_any_size_costs_the_router_at_most_its_head():
    """The route port needs no key: a gigabyte sent to it is not a gigabyte read."""
    chunk, sent = b'{"model": "chat:sql", "x": "' + b"y" * (1024 * 1024), []

    async def receive():
        sent.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": len(sent) < 1024}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    head = asyncio.run(body_head(request))
    assert len(head) == MAX_ROUTED_BODY_BYTES and sum(sent) == len(chunk)
    assert _variant(head) == "sql"


def test_the_body_reaches_the_request_router_whole_where_it_is_json():
    """The prompt goes to ``choose_replica`` (a model routed by prefix); a body cut short has
    none to give, only its model."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "x" * 1000}]}
    assert read_body(json.dumps(body).encode()) == ("chat", body)
    assert read_body(json.dumps(body).encode()[:200]) == ("chat", None)
    assert read_body(b"[1, 2]") == (None, None)
