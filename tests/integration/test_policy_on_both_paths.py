"""The request policy on both paths to a model (``serve/policy``: one middleware, mounted by the
router's app and by each vLLM replica's own app): every test here runs on the router's ``/v1``
and on the model's one-hop URL ``/models/<model_id>/v1``, so a rule cannot hold on one path and
not on the other. Limits counted across both paths are in ``test_one_hop.py``."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.integration.helpers import (
    ADAPTER_KEY,
    ALLOWED_ORIGIN,
    API_KEY,
    HELLO,
    IMAGE_HOST,
    RESERVE_KEY,
    SCOPED_KEY,
    auth_headers,
    wait_until,
)
from tests.integration.session_config import CHAT, CHAT_ADAPTER, EMBED


@pytest.fixture(params=["router", "one-hop"])
def via(request, platform_url):
    """The base URL of ``model``'s OpenAI API on the path under test."""

    def base(model: str) -> str:
        if request.param == "router":
            return f"{platform_url}/v1"
        return f"{platform_url}/models/{model}/v1"

    return base


def _chat(via, body: dict | None = None, key: str = API_KEY, **headers: str) -> httpx.Response:
    body = body if body is not None else {"model": CHAT, "messages": HELLO, "max_tokens": 2}
    return httpx.post(
        f"{via(CHAT)}/chat/completions",
        json=body,
        headers={**auth_headers(key), **headers},
        timeout=60,
    )


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer k\u00e9y"}]
)
def test_a_request_without_a_valid_key_is_a_401(via, headers):
    response = httpx.post(
        f"{via(CHAT)}/chat/completions",
        json={"model": CHAT, "messages": HELLO},
        headers={k: v.encode() for k, v in headers.items()},
        timeout=30,
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_openai_client_gets_its_authentication_error_and_the_model_list_needs_a_key(via):
    bad = openai.OpenAI(base_url=via(CHAT), api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=CHAT, messages=HELLO)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{via(CHAT)}/models", headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{via(CHAT)}/models", headers=auth_headers(), timeout=30).status_code == 200


def test_cors_allows_only_the_listed_origin(via):
    """A preflight carries no key: answered by the CORS policy before the key is asked for."""
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    url = f"{via(CHAT)}/chat/completions"
    ok = httpx.options(url, headers={"Origin": ALLOWED_ORIGIN, **preflight}, timeout=30)
    assert ok.status_code == 200 and ok.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert ok.headers.get("access-control-allow-credentials") == "true"
    other = httpx.options(url, headers={"Origin": "https://evil.example", **preflight}, timeout=30)
    assert "access-control-allow-origin" not in other.headers
    answer = _chat(via, Origin=ALLOWED_ORIGIN)
    assert (
        answer.status_code == 200
        and answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    )


def test_liveness_needs_no_key(via):
    assert httpx.get(via(CHAT).removesuffix("/v1") + "/health", timeout=30).status_code == 200


def test_bad_bodies_are_400_and_an_oversized_one_a_413(via):
    url, headers = f"{via(CHAT)}/chat/completions", auth_headers()
    bad = httpx.post(url, content=b'{"model": ', headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    listed = httpx.post(url, content=b"[1, 2]", headers=headers, timeout=30)
    assert listed.status_code == 400 and listed.json()["error"]["code"] == "invalid_json"
    big = {"model": CHAT, "messages": [{"role": "user", "content": "x" * 300_000}]}
    oversized = _chat(via, big)  # the session's router.max_request_bytes is 256 KiB
    assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "request_too_large"
    assert _chat(via).status_code == 200


def test_a_model_outside_the_keys_scope_is_the_404_of_an_unknown_one(via):
    refused = _chat(via, key=SCOPED_KEY)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert CHAT not in refused.json()["error"]["message"].partition("available")[2]
    embedded = httpx.post(
        f"{via(EMBED)}/embeddings",
        json={"model": EMBED, "input": "hello"},
        headers=auth_headers(SCOPED_KEY),
        timeout=60,
    )
    assert embedded.status_code == 200, embedded.text


def test_a_key_scoped_to_one_adapter_lists_it_alone_and_meets_the_others_as_unknown(via):
    """The one-hop URL's model list is vLLM's (the base model and every adapter): cut to the key's
    scope as the router's is, and an adapter outside it is refused as a name that does not exist."""
    listed = httpx.get(f"{via(CHAT)}/models", headers=auth_headers(ADAPTER_KEY), timeout=30)
    assert listed.status_code == 200, listed.text
    assert [card["id"] for card in listed.json()["data"]] == [CHAT_ADAPTER]

    def chat(model: str) -> httpx.Response:
        return _chat(via, {"model": model, "messages": HELLO, "max_tokens": 2}, ADAPTER_KEY)

    outside, unknown = chat(f"{CHAT}:poet").json(), chat(f"{CHAT}:no-such-adapter").json()
    assert outside["error"]["code"] == "model_not_found"
    named = unknown["error"]["message"].replace(f"'{CHAT}:no-such-adapter'", f"'{CHAT}:poet'")
    del outside["error"]["request_id"], unknown["error"]["request_id"]  # each request's own
    assert outside["error"] == {**unknown["error"], "message": named}
    assert chat(CHAT_ADAPTER).status_code == 200


@pytest.mark.parametrize(
    "part",
    [
        {
            "type": "image_url",
            "image_url": {"url": "http://169.254.169.254/latest/meta-data/x.png"},
        },
        {"image_url": {"url": "http://169.254.169.254/latest/meta-data/x.png"}},  # no "type"
        {"type": "text", "text": "hi", "image_url": "http://[::ffff:169.254.169.254]/x.png"},
        {"image_url": {"url": "http://[64:ff9b::a9fe:a9fe]/x.png"}},  # NAT64 of 169.254.169.254
        {"image_url": {"url": "file:///etc/passwd"}},
    ],
)
def test_media_urls_follow_the_platform_policy(via, part):
    body = {"model": CHAT, "messages": [{"role": "user", "content": [part]}], "max_tokens": 2}
    response = _chat(via, body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]


def test_too_many_media_urls_are_refused_before_any_fetch(via):
    parts = [{"image_url": {"url": f"http://{IMAGE_HOST}:9/{n}.png"}} for n in range(17)]
    body = {"model": CHAT, "messages": [{"role": "user", "content": parts}], "max_tokens": 2}
    response = _chat(via, body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_media_urls"


def test_a_stream_of_any_spelling_ends_in_done_with_the_usage_only_when_asked(via):
    """``"stream": 1`` streams, as vLLM reads it; the policy's usage request stays hidden."""
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 3, "stream": 1}
    response = _chat(via, body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.splitlines() if line]
    assert events[-1] == "data: [DONE]" and '"usage"' not in response.text


def test_answers_carry_a_request_id_on_either_path(via):
    response = _chat(via, **{"X-Request-Id": "policy-test-1"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "policy-test-1"


def _served(codes: tuple[int, ...]) -> bool:
    return set(codes) == {200}


def test_a_rewritten_key_file_applies_within_10_s_on_both_paths(platform):
    """The scoped key's file (a mounted Secret) rewritten: the old key is refused and the new one
    served on the router and the one-hop URL, with no redeploy; then the file is put back."""
    platform.require_owned()
    key_file = platform.config_path.parent / "embed-only.key"
    rotated = "test-key-embeddings-rotated"

    def status(key: str) -> tuple[int, int]:
        return tuple(
            httpx.post(
                f"{base}/embeddings",
                json={"model": EMBED, "input": "hi"},
                headers=auth_headers(key),
                timeout=60,
            ).status_code
            for base in (f"{platform.url}/v1", f"{platform.url}/models/{EMBED}/v1")
        )

    assert status(SCOPED_KEY) == (200, 200)
    key_file.write_text(rotated + "\n")
    try:
        started = time.monotonic()
        assert wait_until(lambda: status(rotated), _served, timeout_s=10) == (200, 200)
        assert time.monotonic() - started <= 10
        assert status(SCOPED_KEY) == (401, 401)
    finally:
        key_file.write_text(SCOPED_KEY + "\n")
    assert wait_until(lambda: status(SCOPED_KEY), _served, timeout_s=10) == (200, 200)


def test_concurrent_requests_with_large_max_tokens_do_not_all_pass_on_either_path(platform_url):
    """Admission reserves prompt + max_tokens: on a key of 60 tokens a minute, 200 requests of 50
    at once (100 per path) are one answer and 199 429s: never two answers, and no 5xx."""
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 50}
    bases = [f"{platform_url}/v1", f"{platform_url}/models/{CHAT}/v1"] * 100

    def post(base: str) -> int:
        return httpx.post(
            f"{base}/chat/completions", json=body, headers=auth_headers(RESERVE_KEY), timeout=120
        ).status_code

    with ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(post, bases))
    assert set(codes) == {200, 429} and codes.count(200) == 1, Counter(codes)
