"""The one parse of a request body, which every engine runs (vLLM's protocol models for vLLM's
endpoints, ours for the others): a bad body is an ``InvalidRequest`` naming the field."""

import pytest

from configs.capabilities import Capability
from configs.open_api_models import InvalidRequest, parse_request

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "capability,body,param",
    [
        (Capability.CHAT, {**CHAT, "messages": "hi"}, "messages"),
        (Capability.CHAT, {**CHAT, "n": "many"}, "n"),
        (Capability.CHAT, {**CHAT, "cache_salt": {}}, "cache_salt"),  # vLLM's own validator error
        (Capability.EMBEDDINGS, {"model": "embed", "input": "x", "cache_salt": {}}, "cache_salt"),
        (Capability.RERANK, {"model": "reranker", "query": "q"}, "documents"),
        (
            Capability.RERANK,
            {"model": "reranker", "query": "q", "documents": ["a"], "top_n": "x"},
            "top_n",
        ),
        (Capability.SCORE, {"model": "reranker"}, "queries"),
        (Capability.DETOKENIZE, {"model": "reranker", "tokens": "abc"}, "tokens"),
        (Capability.TRANSCRIPTION, {"model": "asr", "response_format": "xml"}, "response_format"),
    ],
)
def test_a_bad_body_names_its_field(capability, body, param):
    with pytest.raises(InvalidRequest) as info:
        parse_request(capability, body)
    assert (
        info.value.param == param and info.value.status_code == 400 and param in info.value.message
    )


@pytest.mark.parametrize(
    "capability,body",
    [
        (Capability.CHAT, CHAT),
        (
            Capability.RERANK,
            {"model": "reranker", "query": "q", "documents": ["a", "b"], "top_n": 1},
        ),
        (Capability.TRANSCRIPTION, {"model": "asr", "response_format": "verbose_json"}),
    ],
)
def test_a_good_body_parses(capability, body):
    assert parse_request(capability, body).model == body["model"]
