"""The router app's own logic (auth, validation, lookup, errors, relay) with a fake engine
caller."""

import json

import pytest

from common.engine_response import EngineResponse
from common.upload_sizes import FORM_OVERHEAD_BYTES
from configs.api_keys import APIKey
from configs.server_models import Capability
from serve.router.errors import APIError
from serve.router.routing import ModelRoute, RouterSettings, model_state
from tests.unit.router_fakes import (
    CHAT,
    ROUTES,
    TENSOR_ROUTES,
    assert_openai_error,
    client,
)


def test_routes_by_model_and_capability():
    c, engines = client()
    assert c.post("/v1/chat/completions", json=CHAT).json() == {
        "deployment": "chat-dep",
        "capability": "chat",
    }
    assert (
        c.post("/v1/embeddings", json={"model": "embed", "input": "x"}).json()["deployment"]
        == "embed-dep"
    )
    assert [call[1] for call in engines.calls] == [Capability.CHAT, Capability.EMBEDDINGS]


RERANKER = ModelRoute(
    "reranker",
    "vllm",
    "reranker-dep",
    (
        Capability.RERANK,
        Capability.SCORE,
        Capability.CLASSIFY,
        Capability.TOKENIZE,
        Capability.DETOKENIZE,
    ),
)


@pytest.mark.parametrize(
    "path,body,capability",
    [
        ("/v1/rerank", {"query": "q", "documents": ["a", "b"], "top_n": 1}, Capability.RERANK),
        ("/rerank", {"query": "q", "documents": ["a"]}, Capability.RERANK),
        ("/v1/score", {"queries": "q", "documents": ["a", "b"]}, Capability.SCORE),
        ("/score", {"text_1": "q", "text_2": "a"}, Capability.SCORE),
        ("/classify", {"input": ["x", "y"]}, Capability.CLASSIFY),
        ("/tokenize", {"prompt": "hello"}, Capability.TOKENIZE),
        ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}, Capability.TOKENIZE),
        ("/detokenize", {"tokens": [1, 2]}, Capability.DETOKENIZE),
    ],
)
def test_vllms_other_endpoints_reach_the_model_that_serves_them(path, body, capability):
    c, engines = client({**ROUTES, "reranker": RERANKER})
    answer = c.post(path, json={"model": "reranker", **body})
    assert answer.json() == {"deployment": "reranker-dep", "capability": capability.value}
    assert engines.calls == [("reranker-dep", capability, {"model": "reranker", **body})]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/rerank", {"model": "chat", "query": "q", "documents": ["a"]}),
        ("/tokenize", {"model": "asr", "prompt": "x"}),
    ],
)
def test_an_endpoint_a_model_does_not_serve_is_a_400_before_any_engine(path, body):
    c, engines = client({**ROUTES, "reranker": RERANKER})
    assert_openai_error(c.post(path, json=body), 400, "unsupported_endpoint", "model")
    assert engines.calls == []


def test_a_variant_is_named_by_model_or_by_serves_multiplexed_header():
    c, engines = client()
    assert c.post("/v1/chat/completions", json={**CHAT, "model": "chat:sql"}).status_code == 200
    header = {"serve_multiplexed_model_id": "sql"}
    assert c.post("/v1/chat/completions", json=CHAT, headers=header).status_code == 200
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert engines.variants == ["sql", "sql", None]
    assert [call[2]["model"] for call in engines.calls] == ["chat:sql", "chat:sql", "chat"]
    assert_openai_error(
        c.post("/v1/chat/completions", json={**CHAT, "model": "chat:nope"}), 404, "model_not_found"
    )
    unknown = {"serve_multiplexed_model_id": "nope"}
    assert_openai_error(
        c.post("/v1/chat/completions", json=CHAT, headers=unknown), 404, "model_not_found"
    )
    assert len(engines.calls) == 3


def test_models_list_and_card():
    c, _ = client()
    data = c.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["chat", "embed", "asr", "chat:sql"]
    assert data[3]["parent"] == "chat" and "parent" not in data[0]
    assert data[0]["capabilities"] == ["chat", "completions"] and data[0]["type"] == "vllm"
    assert c.get("/v1/models/embed").json()["capabilities"] == ["embeddings"]
    assert_openai_error(c.get("/v1/models/nope"), 404, "model_not_found")


@pytest.mark.parametrize(
    "body,status,code,param",
    [
        ({**CHAT, "model": "nope"}, 404, "model_not_found", "model"),
        ({k: v for k, v in CHAT.items() if k != "model"}, 400, "missing_model", "model"),
        ({**CHAT, "model": "embed"}, 400, "unsupported_endpoint", "model"),
        ({**CHAT, "max_tokens": 100000}, 400, "context_length_exceeded", "max_tokens"),
    ],
)
def test_requests_the_router_can_refuse_never_reach_an_engine(body, status, code, param):
    c, engines = client()
    assert_openai_error(c.post("/v1/chat/completions", json=body), status, code, param)
    assert engines.calls == []
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_the_engines_400_for_a_body_it_cannot_parse_reaches_the_client():
    c, engines = client()
    engines.refuse = EngineResponse.error(400, "n: Input should be a valid integer", param="n")
    assert_openai_error(c.post("/v1/chat/completions", json={**CHAT, "n": "many"}), 400, param="n")
    assert len(engines.calls) == 1


def test_malformed_and_oversized_bodies():
    c, engines = client(max_request_bytes=2048)
    assert_openai_error(c.post("/v1/chat/completions", content=b"{nope"), 400, "invalid_json")
    assert_openai_error(c.post("/v1/chat/completions", json=[1, 2]), 400, "invalid_json")
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    assert_openai_error(c.post("/v1/chat/completions", json=big), 413, "request_too_large")
    assert_openai_error(c.get("/v1/unknown"), 404)
    assert_openai_error(c.get("/v1/chat/completions"), 405)
    assert engines.calls == []


def test_stream_is_relayed_and_early_errors_keep_their_status():
    c, engines = client()
    with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    assert body == "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert engines.closed.is_set()
    assert_openai_error(
        c.post("/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 1}),
        400,
        param="max_tokens",
    )


@pytest.mark.parametrize(
    "max_tokens,status,code",
    [(2, "service_unavailable_error", "model_unavailable"), (3, "timeout_error", "timeout")],
)
def test_a_stream_that_fails_midway_ends_with_an_error_event(max_tokens, status, code):
    c, engines = client(request_timeout_s=0.5)
    with c.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": max_tokens}
    ) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[0] == "0" and events[-1] == "[DONE]"
    error = json.loads(events[1])["error"]
    assert error["type"] == status and error["code"] == code and error["message"]
    assert engines.closed.is_set()
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_api_keys_guard_everything_but_liveness():
    c, engines = client(api_keys=(APIKey("k1", "one"), APIKey("k2", "two")))
    assert c.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}):
        assert_openai_error(
            c.post("/v1/chat/completions", json=CHAT, headers=headers), 401, "invalid_api_key"
        )
        assert_openai_error(c.get("/v1/models", headers=headers), 401)
        for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/chat"):
            refused = c.get(path, headers=headers)  # in the Open Inference Protocol's error shape
            assert refused.status_code == 401 and isinstance(refused.json()["error"], str), path
    assert engines.calls == []
    assert c.get("/v2/health/live", headers={"Authorization": "Bearer k1"}).json() == {"live": True}
    assert (
        c.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer k2"}
        ).status_code
        == 200
    )


def test_cors_only_for_listed_origins():
    c, _ = client(
        cors={
            "allow_origins": ["https://app.example"],
            "allow_credentials": True,
            "allow_methods": ["POST"],
            "allow_headers": ["Authorization", "Content-Type"],
        }
    )
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = c.options("/v1/chat/completions", headers={"Origin": "https://app.example", **preflight})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    evil = c.options(
        "/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in evil.headers


def test_readiness_names_each_model():
    c, _ = client()
    response = c.get("/ready")
    assert response.status_code == 503
    assert response.json()["models"] == {
        "chat": {
            "ready": True,
            "phase": "ready",
            "unfinished_requests": 0,
            "phase_detail": "2/2 replicas running",
            "replicas": {"running": 2, "target": 2, "nodes": []},
        },
        "embed": {
            "ready": False,
            "phase": "waiting",
            "replicas": {"running": 0, "target": 1, "nodes": []},
            "phase_detail": "1 replica(s) not placed: needs GPU 1; largest free on a node: GPU 0",
        },
        "asr": {"ready": True, "phase": "ready", "unfinished_requests": 0},
    }  # no word from the controller


def upload(test_client, data=None, files=None, path="/v1/audio/transcriptions"):
    return test_client.post(path, data={"model": "asr"} if data is None else data, files=files)


def test_upload_forwards_file_and_fields_with_repeated_fields_as_lists():
    test_client, engines = client()
    response = upload(
        test_client,
        {
            "model": "asr",
            "response_format": "verbose_json",
            "temperature": "0.2",
            "timestamp_granularities[]": ["word", "segment"],
        },
        {"file": ("a.wav", b"RIFF....WAVE", "audio/wav")},
    )
    assert response.status_code == 200, response.text
    deployment, capability, body = engines.calls[-1]
    assert (deployment, capability) == ("asr-dep", Capability.TRANSCRIPTION)
    assert body["file"] == b"RIFF....WAVE" and body["filename"] == "a.wav"
    assert body["timestamp_granularities"] == ["word", "segment"] and body["temperature"] == "0.2"


@pytest.mark.parametrize(
    "data,files,status,code,param",
    [
        ({"model": "asr"}, None, 400, "invalid_content_type", None),  # urlencoded, not multipart
        ({"model": "asr"}, {"other": ("a.wav", b"x")}, 400, None, "other"),
        ({"model": "asr"}, {"file": ("a.wav", b"")}, 400, "empty_file", "file"),
        ({"model": "asr"}, {"file": ("a.wav", b"x" * 1001)}, 413, "file_too_large", "file"),
        ({"model": "chat"}, {"file": ("a.wav", b"x")}, 400, "unsupported_endpoint", "model"),
        ({}, {"file": ("a.wav", b"x")}, 400, "missing_model", "model"),
    ],
)
def test_bad_uploads_are_refused_before_the_engine(data, files, status, code, param):
    test_client, engines = client()
    assert_openai_error(upload(test_client, data, files), status, code, param)
    assert engines.calls == []


def test_upload_body_is_capped_while_it_streams():
    test_client, engines = client(max_request_bytes=1024)
    big = b"x" * (FORM_OVERHEAD_BYTES + 4096)
    assert_openai_error(
        upload(test_client, files={"file": ("a.wav", big)}), 413, "request_too_large"
    )
    assert engines.calls == []


def test_speech_is_json_and_checked_against_the_protocol():
    test_client, engines = client()
    bad = test_client.post(
        "/v1/audio/speech", json={"model": "asr", "input": "hi", "voice": "alloy"}
    )
    assert_openai_error(bad, 400, "unsupported_endpoint")


def _infer(elements: list[str], shape: list[int] | None = None) -> dict:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": shape or [len(elements)],
                "data": elements,
            }
        ]
    }


def test_a_v2_body_is_limited_by_its_own_model_not_the_largest_one():
    c, engines = client(TENSOR_ROUTES, max_request_bytes=2048)
    assert settings_limit("vit") < 1024 * 1024 < settings_limit("big")
    response = c.post("/v2/models/vit/infer", json=_infer(["A" * (1024 * 1024)]))
    assert response.status_code == 413 and isinstance(response.json()["error"], str)
    assert engines.calls == []


def settings_limit(model: str) -> int:
    return RouterSettings(TENSOR_ROUTES, max_request_bytes=2048).tensor_request_bytes(
        TENSOR_ROUTES[model]
    )


def test_the_shape_is_checked_before_any_url_is_fetched():
    c, engines = client(TENSOR_ROUTES)
    urls = ["https://images.example.com/a.png"] * 3
    response = c.post("/v2/models/vit/infer", json=_infer(urls, shape=[1]))
    assert (
        response.status_code == 400 and "has shape [1] but 3 elements" in response.json()["error"]
    )


def test_uploads_past_the_routers_memory_are_a_503_at_once():
    c, engines = client(TENSOR_ROUTES, max_upload_memory_bytes=100_000)
    body = json.dumps(_infer(["QUJD" * 40_000])).encode()  # 160 kB: more than the router may hold
    response = c.post(
        "/v2/models/vit/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    small = c.post("/v2/models/vit/infer", json=_infer(["QUJD"], shape=[2]))
    assert small.status_code == 400  # not 503: the reservation was returned
    files = {"file": ("a.wav", b"x" * 150_000, "audio/wav")}
    assert_openai_error(
        c.post("/v1/audio/transcriptions", data={"model": "asr"}, files=files), 503, "server_busy"
    )


def test_upload_memory_is_returned_when_a_request_ends():
    from serve.router.uploads import UploadMemory

    memory = UploadMemory(300)
    with memory.hold() as held:
        held.add(60)  # counted three times: as read, as parsed or decoded, as sent on
        with pytest.raises(APIError) as info:
            with memory.hold() as other:
                other.add(50)
        assert info.value.status_code == 503 and memory.held_bytes == 180
        with memory.hold() as other:
            other.add(40)
            assert memory.held_bytes == 300
    assert memory.held_bytes == 0


def test_a_model_url_the_router_gets_says_no_more_than_v1_does():
    """HAProxy sends a model's own URL to its application: the router gets the URL of a model
    without one (a 404 that says so), of no model, or of one outside the key's scope, the last
    two the same 404 as an unknown model on /v1, so they tell a key nothing apart."""
    c, _ = client(
        TENSOR_ROUTES, api_keys=(APIKey("chat-only", "team-a", ("chat",)), APIKey("all", "ops"))
    )
    scoped = {"Authorization": "Bearer chat-only"}

    def post(model: str):
        return c.post(f"/models/{model}/v1/chat/completions", json=CHAT, headers=scoped)

    outside, unknown = post("embed"), post("nope")
    assert_openai_error(outside, 404, "model_not_found", "model")
    same = ("message", "type", "param", "code")  # all but the request's own id
    assert [outside.json()["error"][k] for k in same] == [
        json.loads(unknown.text.replace("'nope'", "'embed'"))["error"][k] for k in same
    ]
    assert_openai_error(post("chat"), 404, "no_model_url", "model")
    assert c.post("/models/chat/v1/chat/completions", json=CHAT).status_code == 401


def test_a_scoped_key_uses_only_its_models():
    c, engines = client(
        TENSOR_ROUTES, api_keys=(APIKey("chat-only", "team-a", ("chat",)), APIKey("all", "ops"))
    )
    scoped, everything = {"Authorization": "Bearer chat-only"}, {"Authorization": "Bearer all"}
    assert c.post("/v1/chat/completions", json=CHAT, headers=scoped).status_code == 200
    assert (
        c.post(
            "/v1/chat/completions", json={**CHAT, "model": "chat:sql"}, headers=scoped
        ).status_code
        == 200
    )
    # a model outside the key's scope answers as one that does not exist: no ids to enumerate
    outside = c.post("/v1/embeddings", json={"model": "embed", "input": "x"}, headers=scoped)
    unknown = c.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=scoped)
    assert_openai_error(outside, 404, "model_not_found", "model")
    same = ("message", "type", "param", "code")  # all but the request's own id
    assert [outside.json()["error"][k] for k in same] == [
        json.loads(unknown.text.replace("'nope'", "'embed'"))["error"][k] for k in same
    ]
    assert [m["id"] for m in c.get("/v1/models", headers=scoped).json()["data"]] == [
        "chat",
        "chat:sql",
    ]
    assert_openai_error(c.get("/v1/models/embed", headers=scoped), 404, "model_not_found")
    assert (
        "embed"
        not in c.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=scoped).text
    )
    assert set(c.get("/ready", headers=scoped).json()["models"]) == {"chat"}
    refused = c.post("/v2/models/vit/infer", json=_infer(["QUJD"]), headers=scoped)
    assert refused.status_code == 404 and "model 'vit' does not exist" in refused.json()["error"]
    assert (
        c.post(
            "/v1/embeddings", json={"model": "embed", "input": "x"}, headers=everything
        ).status_code
        == 200
    )
    assert len(c.get("/v1/models", headers=everything).json()["data"]) == len(TENSOR_ROUTES)


@pytest.mark.parametrize(
    "sent,kept", [("client-42", True), ("a" * 129, False), ("has space", False), (None, False)]
)
def test_every_answer_carries_the_request_id_and_the_engine_gets_it(sent, kept):
    http, engines = client()
    headers = {"X-Request-Id": sent} if sent else {}
    answered = http.post("/v1/chat/completions", json=CHAT, headers=headers)
    refused = http.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=headers)
    (request_id,) = engines.request_ids
    assert refused.status_code == 404
    if kept:  # Serve's own middleware returns the header it was sent (the integration tests see it)
        assert request_id == sent == refused.json()["error"]["request_id"]
    else:
        assert answered.headers["x-request-id"] == request_id != sent and len(request_id) == 32
        assert (
            refused.json()["error"]["request_id"] == refused.headers["x-request-id"] != request_id
        )


def test_the_console_is_three_files_under_a_strict_policy_and_needs_no_key():
    c, _ = client(api_keys=(APIKey("k", "secret-key"),))
    page = c.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy
        and "default-src 'none'" in policy
        and "unsafe-inline" not in policy
    )
    assert (
        '<script src="console/console.js"' in page.text and "<script>" not in page.text
    )  # no inline script
    assert c.get("/console/console.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/console/console.css").headers["content-type"].startswith("text/css")
    for other in ("/console/console.html", "/console/..%2Fapp.py", "/console/secrets.txt"):
        assert c.get(other).status_code == 404
    assert "secret-key" not in page.text + c.get("/console/console.js").text
    assert c.get("/v1/models").status_code == 401  # the page is public; the API it calls is not


def test_a_group_member_reports_its_own_counters_and_its_group():
    placement = {"actor_id": "a1"}
    group = {
        "engines": {"b": {"requests_total": 2}, "a": {"requests_total": 5}},
        "placement": placement,
    }
    assert model_state("a", group) == {
        "requests_total": 5,
        "placement": placement,
        "group_models": ["a", "b"],
    }
    assert model_state("c", {"requests_total": 1}) == {"requests_total": 1}  # a model of its own
    assert model_state("c", None) == {}  # no replica answered


class RecordedMetrics:
    """The platform's metrics as (metric, tags) of each count: ``metrics.requests.inc(...)``."""

    def __init__(self):
        self.counted: list[tuple[str, dict]] = []

    def __getattr__(self, metric: str):
        counted = self.counted

        class Metric:
            def inc(self, value, tags):
                counted.append((metric, tags))

            def observe(self, value, tags):
                pass

        return Metric()


def test_requests_the_policy_refuses_before_any_route_are_counted_at_their_endpoint(monkeypatch):
    recorded = RecordedMetrics()
    monkeypatch.setattr("serve.policy.observed.platform_metrics", lambda: recorded)
    c, _ = client(max_request_bytes=2048)
    assert c.post("/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    assert c.post("/v1/chat/completions", json=big).status_code == 413
    requests = [t for metric, t in recorded.counted if metric == "requests"]
    assert [(t["endpoint"], t["model"], t["status"]) for t in requests] == [
        ("/v1/chat/completions", "-", "404"),
        ("/v1/chat/completions", "-", "413"),
    ]
    rejected = [t["reason"] for metric, t in recorded.counted if metric == "rejections"]
    assert rejected == ["request_too_large"]
