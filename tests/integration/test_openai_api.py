"""The real platform (Ray Serve + vLLM on the CPU) driven with the real openai client and HTTP."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.integration.helpers import (
    HELLO,
    assert_leaving_a_stream_stops_it,
    assert_still_serving,
    engine_stats,
)
from tests.integration.session_config import (
    AFFINITY_CHAT,
    CHAT,
    COLD_CHAT,
    EMBED,
    RERANKER,
    session_config,
)

# every model of the session config (the default config's and the tests' own), as configured
ALL_MODELS = {
    model["model_loading_config"]["model_id"]
    for model in session_config(Path(tempfile.mkdtemp()))["applications"][0]["args"]["models"]
}
assert {CHAT, EMBED, RERANKER, "tiny-llava", "tiny-vit-variants", AFFINITY_CHAT} <= ALL_MODELS
# the default config's two, the session's one
PIPELINES = {"voice-chat", "rag-lite", "describe-image"}
VARIANTS = {
    *(f"{chat}:{name}" for chat in (CHAT, AFFINITY_CHAT, COLD_CHAT) for name in ("sql", "poet")),
    "tiny-vit-variants:a",
    "tiny-vit-variants:b",
    "tiny-vit-variants:c",
}


def test_models_list_every_configured_model_with_type_and_capabilities(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == ALL_MODELS | VARIANTS | PIPELINES
    text = ["tokenize", "detokenize"]
    assert models[CHAT].type == "vllm" and models[CHAT].capabilities == [
        "chat",
        "completions",
        *text,
    ]
    assert models[EMBED].capabilities == ["embeddings", "rerank", "score", *text]
    assert models[RERANKER].capabilities == ["rerank", "score", "classify", *text]
    assert client.models.retrieve(EMBED).id == EMBED


def test_readiness_and_liveness(platform_url, http):
    assert httpx.get(f"{platform_url}/health").status_code == 200  # liveness needs no key
    ready = http.get("/ready").json()
    assert ready["status"] == "ready"
    assert all(state["ready"] for state in ready["models"].values())
    assert set(ready["models"]) == ALL_MODELS


def test_chat_completion_with_sampling_parameters(client):
    reply = client.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=12,
        temperature=0.8,
        seed=7,
        n=2,
        logprobs=True,
        top_logprobs=2,
    )
    assert reply.model == CHAT and len(reply.choices) == 2
    assert reply.usage.completion_tokens <= 24 and reply.usage.prompt_tokens > 0
    assert all(len(c.logprobs.content[0].top_logprobs) == 2 for c in reply.choices)
    again = client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=12, temperature=0.8, seed=7, n=2
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 10
    assert text and chunks[0].model == CHAT


def test_stream_is_sse_ending_in_done(http):
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 5, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_completions_with_stop_and_stream(client):
    reply = client.completions.create(
        model=CHAT, prompt="The quick brown", max_tokens=8, stop=["\n"]
    )
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.total_tokens > 0
    streamed = list(
        client.completions.create(
            model=CHAT,
            prompt="The quick brown",
            max_tokens=6,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert sum(1 for c in streamed if c.choices and c.choices[0].text) >= 1
    assert streamed[-1].choices[0].finish_reason == "length"


def test_json_schema_response_format(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer", "enum": [1, 2, 3]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content)["answer"] in (1, 2, 3)


def test_embeddings_from_the_real_minilm_model(client):
    texts = ["the cat sat on the mat", "a feline rested on a rug", "stock markets fell sharply"]
    data = client.embeddings.create(model=EMBED, input=texts).data
    vectors = [np.array(d.embedding) for d in data]
    assert [len(v) for v in vectors] == [384] * 3

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.3


@pytest.mark.parametrize("prefix", ["", f"/models/{EMBED}"])  # through the router, and one hop
@pytest.mark.parametrize("encoding_format", ["bytes", "bytes_only"])
def test_embeddings_as_raw_bytes(http, prefix, encoding_format):
    reply = http.post(
        f"{prefix}/v1/embeddings",
        json={"model": EMBED, "input": ["the cat", "a dog"], "encoding_format": encoding_format},
    )
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/octet-stream"
    vectors = np.frombuffer(reply.content, dtype="<f4").reshape(2, 384)
    assert np.allclose(
        np.linalg.norm(vectors, axis=1), 1, atol=1e-3
    )  # the model's normalized embeddings
    if encoding_format == "bytes":  # vLLM's metadata header: ids, shapes and usage
        assert json.loads(reply.headers["metadata"])["usage"]["prompt_tokens"] > 0
    else:
        assert "metadata" not in reply.headers


BAD_REQUESTS = [
    (
        "unknown model",
        "/v1/chat/completions",
        {"model": "nope", "messages": HELLO},
        404,
        "model_not_found",
    ),
    ("missing model", "/v1/chat/completions", {"messages": HELLO}, 400, "missing_model"),
    (
        "chat on embedding model",
        "/v1/chat/completions",
        {"model": EMBED, "messages": HELLO},
        400,
        "unsupported_endpoint",
    ),
    (
        "embeddings on chat model",
        "/v1/embeddings",
        {"model": CHAT, "input": "x"},
        400,
        "unsupported_endpoint",
    ),
    ("messages not a list", "/v1/chat/completions", {"model": CHAT, "messages": "hi"}, 400, None),
    (
        "max_tokens over context",
        "/v1/chat/completions",
        {"model": CHAT, "messages": HELLO, "max_tokens": 4096},
        400,
        "context_length_exceeded",
    ),
    (
        "prompt over context",
        "/v1/chat/completions",
        {"model": CHAT, "messages": [{"role": "user", "content": "cat " * 3000}]},
        400,
        None,
    ),
    (
        "prompt over context, streamed",
        "/v1/chat/completions",
        {"model": CHAT, "messages": [{"role": "user", "content": "cat " * 3000}], "stream": True},
        400,
        None,
    ),
    (
        "negative temperature",
        "/v1/completions",
        {"model": CHAT, "prompt": "x", "temperature": -1},
        400,
        None,
    ),
    ("embedding without input", "/v1/embeddings", {"model": EMBED}, 400, None),
]


@pytest.mark.parametrize(
    "path,body,status,code", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_gets_openai_error_and_server_keeps_serving(
    client, http, path, body, status, code
):
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error) and error["message"]
    if code:
        assert error["code"] == code
    assert_still_serving(client)


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=CHAT, input="x")
    assert_still_serving(client)


def test_client_disconnect_mid_stream_aborts_generation(platform_url, http, client):
    assert_leaving_a_stream_stops_it(
        f"{platform_url}/v1/chat/completions",
        CHAT,
        lambda: engine_stats(platform_url, CHAT),
        "streams_cancelled",
    )
    assert_still_serving(client)


@pytest.mark.asyncio
async def test_concurrent_streams_all_complete(aclient):
    import asyncio

    async def one(i: int) -> int:
        stream = await aclient.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": f"story {i}"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        return usage.completion_tokens

    assert await asyncio.gather(*(one(i) for i in range(24))) == [16] * 24
