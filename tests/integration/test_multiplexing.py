"""Multiplexed variants on the running platform: LoRA adapters of tiny-chat through vLLM, and
weight variants of a transformers classifier loaded and evicted by Ray Serve's multiplexing."""

from __future__ import annotations

import pytest

from tests.integration.helpers import ADMIN_KEY, auth_headers, fresh_ready
from tests.media_files import b64, image_file, infer_body

PROMPT = [{"role": "user", "content": "Write one short sentence about the sea."}]


def _greedy(client, model: str, **extra) -> tuple[str, str]:
    answer = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=12, temperature=0, **extra
    )
    return answer.model, answer.choices[0].message.content


def test_adapters_are_listed_with_their_base(client):
    cards = {m.id: m for m in client.models.list().data}
    for adapter in ("tiny-chat:sql", "tiny-chat:poet"):
        assert cards[adapter].model_extra["parent"] == "tiny-chat"


def test_an_adapter_request_reaches_the_base_model_with_the_adapter(client):
    base_model, base = _greedy(client, "tiny-chat")
    sql_model, sql = _greedy(client, "tiny-chat:sql")
    _, poet = _greedy(client, "tiny-chat:poet")
    assert (base_model, sql_model) == ("tiny-chat", "tiny-chat:sql")
    # Greedy decoding of the same prompt: only the adapter's weights can change the answer.
    assert sql != base and poet != base and sql != poet
    assert _greedy(client, "tiny-chat:sql")[1] == sql and _greedy(client, "tiny-chat")[1] == base


def test_serves_multiplexed_header_selects_the_adapter(client, http):
    _, sql = _greedy(client, "tiny-chat:sql")
    answer = http.post(
        "/v1/chat/completions",
        headers={"serve_multiplexed_model_id": "sql"},
        json={"model": "tiny-chat", "messages": PROMPT, "max_tokens": 12, "temperature": 0},
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == sql


def test_streaming_through_an_adapter(client):
    _, sql = _greedy(client, "tiny-chat:sql")
    stream = client.chat.completions.create(
        model="tiny-chat:sql", messages=PROMPT, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == sql


@pytest.mark.parametrize("model", ["tiny-chat:nope", "tiny-chat:", "tiny-vit-variants:z"])
def test_unknown_variants_are_404(http, model):
    answer = http.post("/v1/chat/completions", json={"model": model, "messages": PROMPT})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert (
        http.post(
            "/v1/chat/completions", json={"model": "tiny-chat", "messages": PROMPT, "max_tokens": 2}
        ).status_code
        == 200
    )


def _classify(http, model: str, headers: dict | None = None) -> list[float]:
    body = infer_body([b64(image_file(seed=3))], parameters={"top_k": 3})
    answer = http.post(
        f"/v2/models/{model}/infer", json=body, headers={**auth_headers(), **(headers or {})}
    )
    assert answer.status_code == 200, answer.text
    return next(o for o in answer.json()["outputs"] if o["name"] == "scores")["data"]


def _variants_loaded(http) -> list[str]:
    return fresh_ready(http.base_url).json()["models"]["tiny-vit-variants"]["variants_loaded"]


def test_transformers_variants_are_loaded_on_demand_and_bounded_per_replica(http):
    scores = {name: _classify(http, f"tiny-vit-variants:{name}") for name in ("a", "b", "c")}
    assert len({tuple(s) for s in scores.values()}) == 3  # three sets of weights
    assert _classify(http, "tiny-vit-variants") not in scores.values()  # the base is a fourth
    loaded = _variants_loaded(http)
    assert loaded == ["b", "c"]  # max_variants_per_replica: 2, least recently used evicted
    assert _classify(http, "tiny-vit-variants", {"serve_multiplexed_model_id": "a"}) == scores["a"]
    assert _variants_loaded(http) == ["c", "a"]


def test_a_group_serves_its_models_from_one_replica(http):
    models = fresh_ready(http.base_url, ADMIN_KEY).json()["models"]  # actor ids
    members = ["tiny-detector", "tiny-zero-shot", "tiny-captioner", "tiny-image-embedder"]
    assert {m: models[m]["group_models"] for m in members} == {m: sorted(members) for m in members}
    assert len({models[m]["placement"]["actor_id"] for m in members}) == 1
    assert (
        models["tiny-vit"]["placement"]["actor_id"]
        != models["tiny-detector"]["placement"]["actor_id"]
    )
    for model in members[:2]:  # each member answers with its own model behind the shared replica
        answer = http.post(f"/v2/models/{model}/infer", json=infer_body([b64(image_file())]))
        assert answer.status_code == 200 and answer.json()["model_name"] == model
    after = fresh_ready(http.base_url).json()["models"]  # each member's own counters
    assert [after[m]["requests_total"] - models[m]["requests_total"] for m in members] == [
        1,
        1,
        0,
        0,
    ]
