"""A model list cut to a key's scope (``serve/policy/model_list.py``): what vLLM lists on the
one-hop URL, the base model and its LoRA adapters, shows a scoped key only what it may use."""

from configs.api_keys import APIKey
from serve.policy.model_list import in_scope

LISTING = {
    "object": "list",
    "data": [
        {"id": "chat", "object": "model", "max_model_len": 1024},
        {"id": "chat:sql", "object": "model", "parent": "chat"},
        {"id": "chat:poet", "object": "model", "parent": "chat"},
    ],
}


def _ids(listing: dict) -> list[str]:
    return [card["id"] for card in listing["data"]]


def test_a_key_scoped_to_one_adapter_sees_that_adapter_alone():
    assert _ids(in_scope(LISTING, APIKey("k" * 16, "sql", ("chat:sql",)))) == ["chat:sql"]


def test_a_key_scoped_to_the_base_model_sees_it_and_its_adapters_and_an_unscoped_key_all():
    for models in (("chat",), ()):
        kept = in_scope(LISTING, APIKey("k" * 16, "k", models))
        assert kept == LISTING  # the cards unchanged, in their order


def test_a_key_scoped_elsewhere_sees_an_empty_list():
    assert in_scope(LISTING, APIKey("k" * 16, "embed", ("embed",))) == {
        "object": "list",
        "data": [],
    }


def test_a_listing_of_another_shape_keeps_nothing():
    key = APIKey("k" * 16, "all")
    assert in_scope(None, key) == {"object": "list", "data": []}
    assert in_scope({"object": "list", "data": "chat"}, key)["data"] == []
    odd = {"object": "list", "data": [{"id": 5}, "chat", {"object": "model"}, {"id": "chat"}]}
    assert _ids(in_scope(odd, key)) == ["chat"]
