"""vLLM's other endpoints through the platform: rerank (Jina/Cohere shape), score, classify,
tokenize and detokenize, on the shared endpoint and on a model's one-hop URL, over plain HTTP
(the openai client has none of them)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.helpers import API_KEY, HELLO, assert_still_serving
from tests.integration.session_config import CHAT, EMBED, RERANKER

QUERY = "Which animal says meow?"
DOCUMENTS = [
    "A cat says meow and purrs.",
    "The stock market fell sharply today.",
    "Dogs bark at the mailman.",
]


def _rerank(http: httpx.Client, model: str, path: str = "/v1/rerank", **extra) -> dict:
    response = http.post(
        path, json={"model": model, "query": QUERY, "documents": DOCUMENTS, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_cross_encoder_reranks_documents_for_a_query(http):
    answer = _rerank(http, RERANKER, top_n=2)
    results = answer["results"]
    assert answer["model"] == RERANKER and answer["usage"]["total_tokens"] > 0
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert [DOCUMENTS[r["index"]] for r in results] == [r["document"]["text"] for r in results]
    everything = _rerank(http, RERANKER, path="/rerank")["results"]  # vLLM's own path, same answer
    assert sorted(r["index"] for r in everything) == [0, 1, 2]
    assert everything[:2] == results


def test_score_agrees_with_rerank_pair_by_pair(http):
    scores = http.post(
        "/v1/score", json={"model": RERANKER, "queries": QUERY, "documents": DOCUMENTS}
    ).json()
    by_index = {r["index"]: r["relevance_score"] for r in _rerank(http, RERANKER)["results"]}
    assert [d["index"] for d in scores["data"]] == [0, 1, 2]
    assert [d["score"] for d in scores["data"]] == pytest.approx(
        [by_index[i] for i in range(3)], rel=1e-4
    )


def test_the_real_embedding_model_ranks_the_relevant_document_first(http):
    """all-MiniLM-L6-v2 is a real model: by the cosine of its embeddings the cat document wins."""
    results = _rerank(http, EMBED)["results"]
    assert (
        results[0]["index"] == 0 and results[0]["relevance_score"] > results[1]["relevance_score"]
    )


def test_classify_gives_the_cross_encoders_one_label(http):
    data = http.post("/classify", json={"model": RERANKER, "input": ["a cat", "a dog"]}).json()[
        "data"
    ]
    assert [d["num_classes"] for d in data] == [1, 1] and all(len(d["probs"]) == 1 for d in data)


def test_tokenize_and_detokenize_round_trip(http):
    tokens = http.post("/tokenize", json={"model": CHAT, "prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 1024
    text = http.post("/detokenize", json={"model": CHAT, "tokens": tokens["tokens"]}).json()
    assert text["prompt"].endswith("Hello world")
    chat = http.post(
        "/tokenize", json={"model": CHAT, "messages": HELLO, "add_generation_prompt": True}
    ).json()
    assert chat["count"] > tokens["count"]  # the chat template's own tokens
    bert = http.post("/tokenize", json={"model": RERANKER, "prompt": "hello world"}).json()
    assert (
        bert["tokens"][0] != tokens["tokens"][0] and len(bert["tokens"]) == 4
    )  # [CLS] hello world [SEP]


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/rerank", {"model": RERANKER, "query": QUERY}, "documents"),
        (
            "/v1/rerank",
            {"model": CHAT, "query": QUERY, "documents": DOCUMENTS},
            "model",
        ),  # a chat model cannot
        (
            "/v1/rerank",
            {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS, "top_n": "two"},
            "top_n",
        ),
        ("/v1/score", {"model": "tiny-whisper", "queries": QUERY, "documents": DOCUMENTS}, "model"),
        ("/detokenize", {"model": CHAT, "tokens": "not tokens"}, "tokens"),
        ("/classify", {"model": EMBED, "input": "x"}, "model"),
        ("/tokenize", {"model": CHAT}, None),
    ],
)
def test_bad_bodies_are_400s_in_openai_shape(http, client, path, body, param):
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] and (param is None or error["param"] == param)
    assert_still_serving(client)


def test_documents_that_name_media_are_refused_not_fetched(http):
    internal = {
        "content": [
            {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/x.png"}}
        ]
    }
    response = http.post(
        "/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": [internal]}
    )
    assert response.status_code == 400, response.text


def test_the_one_hop_url_serves_them_too(platform_url):
    base = f"{platform_url}/models/{RERANKER}"
    body = {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS}
    assert httpx.post(f"{base}/v1/rerank", json=body, timeout=60).status_code == 401
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    ) as fast:
        shared = httpx.post(
            f"{platform_url}/v1/rerank",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        ).json()["results"]
        assert fast.post("/v1/rerank", json=body).json()["results"] == shared
        assert fast.post("/rerank", json=body).json()["results"] == shared
        assert (
            fast.post("/tokenize", json={"model": RERANKER, "prompt": "hello world"}).json()[
                "count"
            ]
            == 4
        )
        missing = fast.post("/v1/rerank", json={"model": RERANKER, "query": QUERY})
        assert missing.status_code == 400 and missing.json()["error"]["message"]
