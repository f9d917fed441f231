"""Pipelines in the router: each step's call to its model's engine, the values passed along,
the answer and its timings, and every way a run can fail (fake engines: pure logic)."""

import asyncio
import base64
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from common.engine_response import EngineResponse
from configs.api_keys import APIKey
from configs.capabilities import Capability
from configs.pipeline_models import PipelineConfig
from serve.router.app import create_router_app
from serve.router.routing import ModelRoute, RouterSettings
from serve.usage.database import usage_database
from serve.usage.reports import UsageQuery, usage_rows
from tests.unit.router_fakes import LocalLimits, assert_openai_error

ROUTES = {
    name: ModelRoute(name, kind, f"{name}-dep", (capability,))
    for name, kind, capability in [
        ("asr", "audio", Capability.TRANSCRIPTION),
        ("llm", "vllm", Capability.CHAT),
        ("tts", "audio", Capability.SPEECH),
        ("captioner", "vision", Capability.IMAGE_TO_TEXT),
        ("ranker", "vllm", Capability.RERANK),
    ]
}
PIPELINES = [
    {
        "model_id": "voice-chat",
        "steps": [
            {"task": "transcribe", "model": "asr"},
            {"task": "chat", "model": "llm", "system": "Be brief.", "max_tokens": 8},
            {"task": "speak", "model": "tts", "voice": "echo"},
        ],
    },
    {
        "model_id": "rag-lite",
        "steps": [
            {"task": "rerank", "model": "ranker", "top_n": 1},
            {"task": "chat", "model": "llm"},
        ],
    },
    {
        "model_id": "describe-image",
        "steps": [
            {"task": "caption", "model": "captioner"},
            {"task": "chat", "model": "llm", "prompt": "Describe: {text}"},
        ],
    },
    {"model_id": "one-chat", "steps": [{"task": "chat", "model": "llm"}]},
    {"model_id": "long-chat", "steps": [{"task": "chat", "model": "llm", "max_tokens": 80}]},
    # a step that hangs for 5 s runs past it; no step that answers comes near it
    {"model_id": "slow", "timeout_s": 0.2, "steps": [{"task": "chat", "model": "llm"}]},
    {"model_id": "gone", "steps": [{"task": "chat", "model": "not-deployed"}]},
]
WAV = b"RIFF....WAVEfmt "


class StepEngines:
    """Answers as each engine type does; records what each call got."""

    def __init__(self):
        self.calls: list[tuple[str, Capability, dict]] = []
        self.released = asyncio.Event()  # what a chat of "hold" waits for

    async def call(self, route, capability, body):
        self.calls.append((route.model_id, capability, body))
        if capability is Capability.TRANSCRIPTION:
            return EngineResponse.json({"text": f"heard {len(body['file'])} bytes"})
        if capability is Capability.CHAT:
            prompt = body["messages"][-1]["content"]
            if prompt == "refuse":
                return EngineResponse.error(400, "the engine refuses", param="messages")
            if prompt == "hang":
                await asyncio.sleep(5)
            if prompt == "hold":
                await self.released.wait()
            return EngineResponse.json(
                {
                    "choices": [{"message": {"content": f"reply to <{prompt}>"}}],
                    "usage": {"total_tokens": 11},
                }
            )
        if capability is Capability.SPEECH:
            return EngineResponse(200, WAV, "audio/wav")
        if capability is Capability.IMAGE_TO_TEXT:
            return EngineResponse.json(
                {
                    "outputs": [
                        {
                            "name": "captions",
                            "datatype": "BYTES",
                            "shape": [1],
                            "data": ["a cat on a mat"],
                        }
                    ]
                }
            )
        if capability is Capability.RERANK:
            ranked = sorted(range(len(body["documents"])), key=lambda i: -len(body["documents"][i]))
            return EngineResponse.json(
                {"results": [{"index": i, "relevance_score": 1.0} for i in ranked[: body["top_n"]]]}
            )
        raise AssertionError(capability)

    async def status(self, route, timeout_s):
        return {"unfinished_requests": 0}

    async def phases(self):
        return {}


def client(
    keys: tuple[APIKey, ...] = (), limits=None, usage_database: str | None = None
) -> tuple[TestClient, StepEngines]:
    engines = StepEngines()
    pipelines = {p["model_id"]: PipelineConfig.model_validate(p) for p in PIPELINES}
    settings = RouterSettings(
        ROUTES, pipelines=pipelines, api_keys=keys, usage_database=usage_database
    )
    return TestClient(create_router_app(settings, engines, limits)), engines


class SpentTokens:
    """Per-key limits that admit everything and record what each key spent."""

    def __init__(self):
        self.spent: list[tuple[str, int]] = []
        self.reserved: list[int] = []  # by the steps

    async def admit(self, key, reserve_tokens=0, hold_s=None):
        return lambda tokens: self.settle(key, 0, tokens)

    async def reserve(self, key, tokens, hold_s=None):
        self.reserved.append(tokens)
        return lambda spent: self.settle(key, 0, spent)

    def settle(self, key, ticket, tokens):
        self.spent.append((key.name, tokens))


def test_a_pipeline_is_a_keys_only_with_every_model_its_steps_call():
    alone = APIKey("p" * 16, "pipeline-alone", ("describe-image",))
    whole = APIKey("w" * 16, "whole", ("describe-image", "captioner", "llm"))
    c, engines = client((alone, whole))
    image = {"model": "describe-image", "image": base64.b64encode(b"png").decode()}

    def post(key):
        return c.post(
            "/v1/pipelines", json=image, headers={"Authorization": f"Bearer {key.secret}"}
        )

    refused = post(alone)  # as a pipeline that does not exist, and no step ran
    assert_openai_error(refused, 404, "model_not_found", "model")
    assert engines.calls == []
    listed = c.get("/v1/models", headers={"Authorization": f"Bearer {alone.secret}"}).json()
    assert listed["data"] == []
    assert post(whole).status_code == 200


def test_a_pipelines_steps_are_charged_to_a_key_that_meters_tokens():
    key = APIKey("t" * 16, "few-tokens", tokens_per_minute=1000)
    limits = SpentTokens()
    c, _ = client((key,), limits)
    answer = c.post(
        "/v1/pipelines",
        json={"model": "voice-chat", "audio": base64.b64encode(b"x" * 100).decode()},
        headers={"Authorization": f"Bearer {key.secret}"},
    )
    assert answer.status_code == 200, answer.text
    assert ("few-tokens", 11) in limits.spent  # the chat step's usage


async def test_concurrent_runs_reserve_their_steps_tokens_and_cannot_all_pass():
    """A step reserves what it may spend (prompt + max_tokens) before its call, as a request does
    at admission: while one run's chat of up to 80 tokens runs, another on a key of 100 a minute
    is a 429, not a second 80; once the first settles its real count (11), the next run fits."""
    key = APIKey("t" * 16, "few-tokens", tokens_per_minute=100)
    limits = LocalLimits()
    engines = StepEngines()
    pipelines = {p["model_id"]: PipelineConfig.model_validate(p) for p in PIPELINES}
    settings = RouterSettings(ROUTES, pipelines=pipelines, api_keys=(key,))
    transport = httpx.ASGITransport(create_router_app(settings, engines, limits))
    headers = {"Authorization": f"Bearer {key.secret}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as http:

        def run(text):
            return http.post(
                "/v1/pipelines", json={"model": "long-chat", "text": text}, headers=headers
            )

        first = asyncio.ensure_future(run("hold"))
        while not engines.calls:  # the first run's chat step is running
            await asyncio.sleep(0.01)
        refused = await run("hi")
        engines.released.set()
        assert (await first).status_code == 200
        assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert len(engines.calls) == 1  # the refused run's step never reached its engine
        assert [n for _, n in limits.window.tokens[key.name]] == [11]
        assert (await run("hi")).status_code == 200


def test_voice_chat_transcribes_answers_and_speaks():
    c, engines = client()
    answer = c.post(
        "/v1/pipelines",
        json={"model": "voice-chat", "audio": base64.b64encode(b"x" * 100).decode()},
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["output"] == {
        "text": "reply to <heard 100 bytes>",
        "audio": base64.b64encode(WAV).decode(),
        "audio_format": "wav",
    }
    assert [(s["task"], s["model"]) for s in result["steps"]] == [
        ("transcribe", "asr"),
        ("chat", "llm"),
        ("speak", "tts"),
    ]
    assert result["steps"][0]["output"] == {"text": "heard 100 bytes"} and all(
        s["latency_ms"] >= 0 for s in result["steps"]
    )
    chat = engines.calls[1][2]
    assert (
        chat["messages"]
        == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "heard 100 bytes"},
        ]
        and chat["max_tokens"] == 8
    )
    assert engines.calls[2][2] == {
        "model": "tts",
        "input": "reply to <heard 100 bytes>",
        "voice": "echo",
        "response_format": "wav",
    }
    timing = answer.headers["server-timing"].split(", ")
    assert [t.split(";")[0] for t in timing] == [
        "step0",
        "step1",
        "step2",
    ] and 'desc="chat llm"' in timing[1]


def test_rag_lite_answers_from_the_best_document():
    c, engines = client()
    body = {
        "model": "rag-lite",
        "text": "what purrs?",
        "documents": ["short", "the longest document here", "mid one"],
    }
    result = c.post("/v1/pipelines", json=body).json()
    assert engines.calls[0][2] == {
        "model": "ranker",
        "query": "what purrs?",
        "documents": body["documents"],
        "top_n": 1,
    }
    prompt = engines.calls[1][2]["messages"][-1]["content"]
    assert prompt == "Answer from this context:\nthe longest document here\n\nQuestion: what purrs?"
    assert result["output"]["context"] == "the longest document here"


def test_describe_image_takes_a_data_url_and_fills_the_prompt():
    c, engines = client()
    url = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    result = c.post("/v1/pipelines", json={"model": "describe-image", "image": url}).json()
    assert engines.calls[0][2]["inputs"] == [b"\x89PNG fake"]
    assert result["output"]["text"] == "reply to <Describe: a cat on a mat>"


def test_pipelines_are_models_of_their_own_type():
    c, _ = client()
    cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert cards["voice-chat"]["type"] == "pipeline" and cards["voice-chat"]["capabilities"] == [
        "pipeline"
    ]
    assert cards["rag-lite"]["inputs"] == ["text", "documents"]
    assert c.get("/v1/models/describe-image").json()["steps"][0] == {
        "task": "caption",
        "model": "captioner",
    }


@pytest.mark.parametrize(
    "body,status,code,param",
    [
        ({"model": "nope", "text": "x"}, 404, "model_not_found", "model"),
        ({"text": "x"}, 400, "missing_model", "model"),
        ({"model": "voice-chat"}, 400, "missing_input", "audio"),
        ({"model": "voice-chat", "audio": "not base64!"}, 400, None, "audio"),
        (
            {"model": "voice-chat", "audio": "http://169.254.169.254/latest"},
            400,
            None,
            "audio",
        ),  # not an allowed domain
        ({"model": "voice-chat", "audio": "AAAA", "text": "x"}, 400, None, "text"),
        ({"model": "rag-lite", "text": "q", "documents": "one string"}, 400, None, "documents"),
        ({"model": "rag-lite", "text": "", "documents": ["a"]}, 400, None, "text"),
    ],
)
def test_bad_requests_fail_before_any_step(body, status, code, param):
    c, engines = client()
    assert_openai_error(c.post("/v1/pipelines", json=body), status, code, param)
    assert engines.calls == []


def test_a_step_that_fails_names_itself_and_keeps_its_status():
    c, engines = client()
    refused = c.post("/v1/pipelines", json={"model": "one-chat", "text": "refuse"})
    assert_openai_error(refused, 400, "pipeline_step_failed")
    assert refused.json()["error"]["message"] == "steps[0] (chat, llm): the engine refuses"


def test_a_pipeline_past_its_timeout_is_a_504_naming_the_step_charged_its_reservation():
    """The step cut by the timeout never brought its usage: its key is charged what it reserved,
    as a request's JSON answer cut before its end is."""
    key = APIKey("t" * 16, "few-tokens", tokens_per_minute=1000)
    limits = SpentTokens()
    c, _ = client((key,), limits)
    answer = c.post(
        "/v1/pipelines",
        json={"model": "slow", "text": "hang"},
        headers={"Authorization": f"Bearer {key.secret}"},
    )
    assert_openai_error(answer, 504, "timeout")
    assert "steps[0] (chat, llm)" in answer.json()["error"]["message"]
    (reserved,) = limits.reserved
    assert reserved > 0 and ("few-tokens", reserved) in limits.spent


def test_a_step_whose_model_is_not_deployed_is_a_503():
    c, _ = client()
    assert_openai_error(
        c.post("/v1/pipelines", json={"model": "gone", "text": "hi"}), 503, "model_unavailable"
    )


def test_the_flow_is_checked_when_the_config_loads():
    with pytest.raises(ValueError, match=r"steps\[1\]: a 'caption' step needs image"):
        PipelineConfig.model_validate(
            {
                "model_id": "p",
                "steps": [{"task": "chat", "model": "llm"}, {"task": "caption", "model": "c"}],
            }
        )
    with pytest.raises(ValueError, match="voice do\\(es\\) not apply to a 'chat' step"):
        PipelineConfig.model_validate(
            {"model_id": "p", "steps": [{"task": "chat", "model": "llm", "voice": "x"}]}
        )
    assert (
        json.loads(PipelineConfig.model_validate(PIPELINES[0]).model_dump_json())["timeout_s"]
        == 120
    )


def test_ready_lists_each_pipeline_ready_when_its_steps_models_are():
    c, _ = client()
    body = c.get("/ready").json()
    assert body["pipelines"]["voice-chat"] == {
        "ready": True,
        "phase": "ready",
        "phase_detail": "3 steps ready",
    }
    assert (
        body["pipelines"]["gone"]["ready"] is False
        and "not-deployed" in body["pipelines"]["gone"]["phase_detail"]
    )
    assert body["status"] == "not_ready"  # a pipeline of the config cannot run


def test_an_inputs_download_is_held_against_the_upload_memory(monkeypatch):
    """A URL input's bytes count against the replica's upload memory while the run lasts, as a
    chat's media does: more than the memory holds is a 503, before the steps run."""
    from common.upload_sizes import UPLOAD_COPIES_HELD
    from serve.router import pipelines as pipeline_module

    async def fetch(url, policy, budget):
        budget.take(len(WAV) * 100)  # the bytes as they arrive
        return WAV * 100, "audio/wav"

    monkeypatch.setattr(pipeline_module, "fetch_media", fetch)
    body = {"model": "voice-chat", "audio": "https://media.example/hello.wav"}
    pipelines = {p["model_id"]: PipelineConfig.model_validate(p) for p in PIPELINES}
    for memory, status in ((len(WAV) * 100 * UPLOAD_COPIES_HELD, 200), (1024, 503)):
        engines = StepEngines()
        settings = RouterSettings(ROUTES, pipelines=pipelines, max_upload_memory_bytes=memory)
        answer = TestClient(create_router_app(settings, engines)).post("/v1/pipelines", json=body)
        assert answer.status_code == status, answer.text
        assert len(engines.calls) == (3 if status == 200 else 0)


def test_each_step_is_in_the_usage_ledger_and_a_key_past_its_budget_runs_none(tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    admin = APIKey("admin-key-0123456789", "ops", admin=True)
    c, engines = client((admin,), usage_database=url)
    db = usage_database(url)
    try:
        _, secret = db.keys.create("team-a", {"daily_token_budget": 11})
        db.refresh()
        body = {"model": "rag-lite", "text": "what purrs?", "documents": ["a", "bb"]}
        headers = {"Authorization": f"Bearer {secret}"}
        assert c.post("/v1/pipelines", json=body, headers=headers).status_code == 200
        db.ledger.flush()
        rows = usage_rows(db.engine, UsageQuery(key="team-a"))
        assert [(r["model"], r["endpoint"], r["requests"], r["total_tokens"]) for r in rows] == [
            ("llm", "/v1/pipelines", 1, 11),
            ("ranker", "/v1/pipelines", 1, 0),
        ]
        calls = len(engines.calls)
        refused = c.post("/v1/pipelines", json=body, headers=headers)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "daily_token_budget_exceeded"
        assert len(engines.calls) == calls  # no step ran
    finally:
        db.close()
