"""The one-hop path: ``/models/<model_id>/v1`` answered by vLLM's own server on the engine replica
(HAProxy -> replica), with the platform's keys, limits, media policy and error shape."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import openai
import psutil
import pytest

from common.serve_env import haproxy_processes
from serve.policy.key_limits import KeyLimits
from tests.integration.helpers import (
    API_KEY,
    BURST_KEY,
    HELLO,
    LIMITED_KEY,
    SCOPED_KEY,
    TOKEN_KEY,
    assert_leaving_a_stream_stops_it,
    auth_headers,
    engine_stats,
)
from tests.integration.session_config import CHAT, EMBED


@pytest.fixture(scope="module")
def fast(platform_url) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform_url}/models/{CHAT}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )


def test_chat_and_stream_through_the_model_url(fast):
    reply = fast.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=8, seed=3, temperature=0.5
    )
    assert reply.model == CHAT and reply.usage.completion_tokens <= 8
    chunks = list(
        fast.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 10
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_same_engine_as_the_shared_endpoint(fast, client):
    """Greedy answers agree: both paths reach the same vLLM engine with the same template."""
    one_hop = fast.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=12, temperature=0)
    shared = client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=12, temperature=0
    )
    assert one_hop.choices[0].message.content == shared.choices[0].message.content


def test_completions_and_embeddings(platform_url, fast):
    completion = fast.completions.create(model=CHAT, prompt="Once upon", max_tokens=5, stop=["\n"])
    assert completion.choices[0].finish_reason in ("length", "stop")
    embed = openai.OpenAI(
        base_url=f"{platform_url}/models/{EMBED}/v1", api_key=API_KEY, max_retries=0
    )
    vectors = embed.embeddings.create(model=EMBED, input=["the cat sat", "a dog ran"]).data
    assert [len(v.embedding) for v in vectors] == [384, 384]


def test_lora_variant_through_the_model_url(fast):
    base = fast.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=12, temperature=0)
    sql = fast.chat.completions.create(
        model=f"{CHAT}:sql", messages=HELLO, max_tokens=12, temperature=0
    )
    assert (
        sql.model == f"{CHAT}:sql"
        and sql.choices[0].message.content != base.choices[0].message.content
    )
    assert {m.id for m in fast.models.list().data} >= {CHAT, f"{CHAT}:sql", f"{CHAT}:poet"}


def test_errors_keep_the_openai_shape(platform_url, fast):
    url = f"{platform_url}/models/{CHAT}/v1"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer k\u00e9y"}):
        response = httpx.post(
            f"{url}/chat/completions",
            json={"model": CHAT, "messages": HELLO},
            headers={k: v.encode() for k, v in headers.items()},
        )
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        fast.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        fast.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=-3)
    with pytest.raises(openai.BadRequestError):  # raised by vLLM's model validator
        fast.chat.completions.create(model=CHAT, messages=HELLO, extra_body={"cache_salt": {}})
    bad = httpx.post(f"{url}/chat/completions", content=b'{"model": ', headers=auth_headers())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    nested = httpx.post(
        f"{url}/chat/completions",
        content=b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        headers=auth_headers(),
    )
    assert nested.status_code in (400, 413) and "error" in nested.json()
    # vLLM's admin and scaling routes are not exposed on this path.
    for path in ("/scale_elastic_ep", "/invocations", "/v1/load_lora_adapter"):
        hidden = httpx.post(f"{platform_url}/models/{CHAT}{path}", json={}, headers=auth_headers())
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    assert fast.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2).choices


def _replica_http_port(pid: int) -> int:
    """The port on which the replica process answers HTTP itself (it also listens for Ray's
    gRPC)."""
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN:
            try:
                httpx.get(f"http://127.0.0.1:{conn.laddr.port}/", timeout=2)
                return conn.laddr.port
            except httpx.HTTPError:
                continue
    raise AssertionError(f"replica {pid} answers HTTP on no port")


def test_the_replica_port_itself_requires_the_key(platform_url):
    """Anyone who reaches a node can skip HAProxy: the replica enforces the key itself."""
    port = _replica_http_port(engine_stats(platform_url, CHAT)["placement"]["pid"])
    prefix = f"http://127.0.0.1:{port}/models/{CHAT}/v1"
    response = httpx.get(f"{prefix}/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{prefix}/models", headers=auth_headers()).json()["data"][0]["id"] == CHAT


def test_a_single_cpu_shard_runs_inside_vllms_engine_core(platform_url):
    """On the CPU one shard runs in vLLM's engine core process, bound to the cores vLLM gives its
    worker: no worker process, and no step handed over between two processes."""
    replica = psutil.Process(engine_stats(platform_url, CHAT)["placement"]["pid"])
    [engine_core] = [p for p in replica.children() if p.cmdline()[:1] == ["VLLM::EngineCore"]]
    assert not [p for p in engine_core.children() if p.cmdline()[:1] == ["VLLM::Worker"]]
    [cores] = {frozenset(os.sched_getaffinity(t.id)) for t in engine_core.threads()}
    assert cores < os.sched_getaffinity(
        replica.pid
    )  # vLLM's binding for its worker, on every thread


def test_haproxy_runs_under_sched_batch(platform_url):
    """Woken by each event a replica writes, HAProxy must not preempt the replica
    (scripts/haproxy)."""
    policies = []
    for process in haproxy_processes(urlparse(platform_url).port):
        with contextlib.suppress(ProcessLookupError):  # one that a reload just replaced
            policies.append(os.sched_getscheduler(process.pid))
    assert policies and set(policies) == {os.SCHED_BATCH}


def test_client_disconnect_aborts_generation_in_vllm(platform_url, fast):
    # Leaving at once, and leaving a stream the client stopped reading a while before: with Ray's
    # HAProxy splicing, about one in three of those stranded its session (HAProxy spinning on it,
    # vLLM generating on), so that case is tried several times.
    for pause_s in (0, 3, 3, 3, 3):
        assert_leaving_a_stream_stops_it(
            f"{platform_url}/models/{CHAT}/v1/chat/completions",
            CHAT,
            lambda: engine_stats(platform_url, CHAT),
            "requests_aborted",
            pause_s=pause_s,
        )
    assert fast.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2).choices


def test_a_scoped_key_reaches_only_its_model_on_either_path(platform_url):
    def client(prefix: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{platform_url}{prefix}/v1", api_key=SCOPED_KEY, max_retries=0, timeout=60
        )

    for prefix in (f"/models/{EMBED}", ""):
        assert client(prefix).embeddings.create(model=EMBED, input="hello").data[0].embedding
    for prefix in (f"/models/{CHAT}", ""):
        # as a model that does not exist: a key learns no ids beyond its scope
        with pytest.raises(openai.NotFoundError) as info:
            client(prefix).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2)
        assert info.value.body["code"] == "model_not_found"
    assert [m.id for m in client("").models.list().data] == [EMBED]


def test_a_model_url_outside_the_keys_scope_answers_as_one_that_does_not_exist(platform_url):
    """tiny-chat's own URL (its replica's policy refuses the key) and a URL of no model (the
    router answers it): the same 404 but for the name, so a key cannot enumerate model ids."""

    def error(model: str) -> dict:
        answer = httpx.post(
            f"{platform_url}/models/{model}/v1/chat/completions",
            json={"model": model, "messages": HELLO, "max_tokens": 2},
            headers={"Authorization": f"Bearer {SCOPED_KEY}"},
            timeout=60,
        )
        assert answer.status_code == 404, answer.text
        return {k: v for k, v in answer.json()["error"].items() if k != "request_id"}

    outside, unknown = error(CHAT), error("no-such-model")
    assert outside["code"] == "model_not_found", outside
    assert outside == {**unknown, "message": unknown["message"].replace("no-such-model", CHAT)}


def test_a_keys_requests_per_minute_are_counted_across_both_paths(platform_url):
    def embed(prefix: str) -> httpx.Response:
        return httpx.post(
            f"{platform_url}{prefix}/v1/embeddings",
            json={"model": EMBED, "input": "hi"},
            headers={"Authorization": f"Bearer {LIMITED_KEY}"},
            timeout=60,
        )

    # The router replica and the engine replica count in one window: 3 requests, then 429s.
    assert [embed(p).status_code for p in ("", f"/models/{EMBED}", "")] == [200, 200, 200]
    for prefix in (f"/models/{EMBED}", ""):
        refused = embed(prefix)
        assert (
            refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        )
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert (
        embed("").status_code == 429
        and httpx.post(  # other keys are not held back
            f"{platform_url}/v1/embeddings",
            json={"model": EMBED, "input": "hi"},
            headers=auth_headers(),
        ).status_code
        == 200
    )


def test_a_burst_on_a_limited_key_gets_exactly_its_limit_on_both_paths_and_never_a_5xx(platform):
    """200 requests at once, half through the router and half on the one-hop URL, on a key of 20
    a minute: 20 are served and the rest get 429, whichever replica asks the limits first. Then
    the limits actor is killed: the replicas start (or find) another, and still no 5xx."""

    def embed(prefix: str) -> int:
        return httpx.post(
            f"{platform.url}{prefix}/v1/embeddings",
            json={"model": EMBED, "input": "hi"},
            headers={"Authorization": f"Bearer {BURST_KEY}"},
            timeout=120,
        ).status_code

    prefixes = ["", f"/models/{EMBED}"] * 100
    with ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(embed, prefixes))
    assert sorted(set(codes)) == [200, 429] and codes.count(200) == 20, codes
    if not platform.owned:
        return
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ray; ray.init(address='auto', namespace='serve'); "
            f"ray.kill(ray.get_actor({KeyLimits('platform').actor_name!r}))",
        ],
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 0, killed.stderr[-2000:]
    assert {embed(p) for p in ("", f"/models/{EMBED}")} <= {200, 429}


def test_a_keys_tokens_per_minute_are_counted_from_streams_and_answers_on_both_paths(platform_url):
    one_hop, shared = (
        openai.OpenAI(
            base_url=f"{platform_url}{p}/v1", api_key=TOKEN_KEY, max_retries=0, timeout=60
        )
        for p in (f"/models/{CHAT}", "")
    )
    # A stream on the one-hop path: its usage is counted, though the client did not ask to see it.
    chunks = list(
        one_hop.chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=16, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert chunks and all(chunk.usage is None and chunk.choices for chunk in chunks)
    used = 0
    for _ in range(6):  # 60 tokens a minute: a few 16-token answers, then 429 on either path
        try:
            used += shared.chat.completions.create(
                model=CHAT, messages=HELLO, max_tokens=16, extra_body={"ignore_eos": True}
            ).usage.total_tokens
        except openai.RateLimitError as err:
            assert err.body["code"] == "rate_limit_exceeded"
            break
    else:
        raise AssertionError(f"no 429 after {used} tokens beyond the stream")
    assert used < 60  # the stream's tokens counted too
    with pytest.raises(openai.RateLimitError):
        one_hop.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2)
