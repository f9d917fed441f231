"""The request policy (``serve/policy/request_policy.py``) around a stand-in for vLLM's ASGI app, as
a one-hop replica mounts it: its request timeout and its token metering. The router's app mounts
the same middleware (``test_router_app.py``, ``test_key_limits.py``)."""

import asyncio
import dataclasses
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from common.streaming import stream_requested
from configs.api_keys import APIKey
from configs.server_models import Capability
from serve.deployments.vllm_ingress import ONE_HOP_ENDPOINTS
from serve.policy import media_refs
from serve.policy.metering import MeteredAnswer, guessed_prompt_tokens
from serve.policy.request_policy import PolicyMount, RequestPolicy
from serve.router.errors import APIError
from serve.router.routing import VLLM_ENDPOINTS, ModelRoute, RouterSettings

TIMEOUT_S = 0.5
ONE_HOP = PolicyMount("direct", frozenset(VLLM_ENDPOINTS), "m", ONE_HOP_ENDPOINTS)
ROUTES = {"m": ModelRoute("m", "vllm", "m-dep", (Capability.CHAT,))}


def one_hop_policy(app, settings: RouterSettings, limits=None) -> RequestPolicy:
    return RequestPolicy(app, settings, ONE_HOP, limits)


def _model_app(cancelled: asyncio.Event, stall_after: int) -> Starlette:
    """Answers ``stall_after`` events (or, for 0 and no stream, nothing) and then hangs."""

    async def chat(request):
        body = await request.json()

        async def events():
            try:
                for i in range(stall_after):
                    yield f"data: {i}\n\n"
                await asyncio.sleep(3600)
            finally:
                cancelled.set()

        if body.get("stream"):
            return StreamingResponse(events(), media_type="text/event-stream")
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
        return JSONResponse({})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def _chat(app, key: APIKey | None = None, **request) -> httpx.Response:
    """One ``POST /v1/chat/completions`` through ``app`` (``request``: httpx's ``json`` or
    ``content``), with ``key``'s bearer header when given."""
    headers = {"Authorization": f"Bearer {key.secret}"} if key is not None else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        return await client.post("/v1/chat/completions", headers=headers, **request)


async def _post(stream: bool, stall_after: int = 0) -> tuple[httpx.Response, asyncio.Event]:
    cancelled = asyncio.Event()
    guard = one_hop_policy(
        _model_app(cancelled, stall_after),
        RouterSettings(routes=ROUTES, request_timeout_s=TIMEOUT_S),
    )
    response = await _chat(guard, json={"messages": [], "stream": stream})
    return response, cancelled


@pytest.mark.asyncio
async def test_a_request_past_the_timeout_is_a_504_and_the_model_call_is_cancelled():
    response, cancelled = await _post(stream=False)
    assert response.status_code == 504
    assert (
        response.json()["error"]["code"] == "timeout"
        and response.json()["error"]["type"] == "timeout_error"
    )
    assert cancelled.is_set()


@pytest.mark.asyncio
async def test_a_stream_past_the_timeout_ends_with_an_error_event():
    response, cancelled = await _post(stream=True, stall_after=2)
    assert response.status_code == 200
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert events[:2] == ["0", "1"] and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout"
    assert cancelled.is_set()


@pytest.mark.asyncio
async def test_raw_bytes_embeddings_are_metered_from_their_usage_header_dropped_unless_asked():
    sent, spent = [], []

    async def send(message):
        sent.append(message)

    metered = MeteredAnswer(send, None, spent.append, keep_usage_header=False).send
    binary = [(b"content-type", b"application/octet-stream")]
    await metered(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": binary + [(b"metadata", b'{"usage": {"total_tokens": 3}}')],
        }
    )
    await metered({"type": "http.response.body", "body": b"\x00\x00\x80\x3f", "more_body": False})
    assert spent == [3] and sent[0]["headers"] == binary


@pytest.mark.parametrize(
    "value,streams",
    [
        (True, True),
        (1, True),
        ("true", True),
        ("on", True),
        (False, False),
        (0, False),
        ("false", False),
        (None, False),
        ("maybe", False),
        ([1], False),
    ],
)
def test_stream_is_read_as_vllm_reads_it(value, streams):
    assert stream_requested({"stream": value}) is streams


class SpentTokens:
    """The limits a replica asks, as lists of what was reserved and what was spent."""

    def __init__(self):
        self.reserved: list[int] = []
        self.spent: list[int] = []

    async def admit(self, key, reserve_tokens=0, hold_s=None):
        self.reserved.append(reserve_tokens)
        return self.spent.append


def _usage_app(hang: bool = False) -> Starlette:
    """Streams two chunks, with the usage so far on each when asked for continuous usage, and a
    usage event when asked, for any ``stream`` vLLM streams for; or hangs after the chunks."""

    async def chat(request):
        body = await request.json()
        options = body.get("stream_options") or {}

        async def events():
            for total, content in ((21, "a"), (22, "b")):
                usage = {"total_tokens": total} if options.get("continuous_usage_stats") else None
                chunk = {"choices": [{"delta": {"content": content}}], "usage": usage}
                yield f"data: {json.dumps(chunk)}\n\n"
            if hang:
                await asyncio.sleep(3600)
            if options.get("include_usage"):
                yield 'data: {"choices": [], "usage": {"total_tokens": 42}}\n\n'
            yield "data: [DONE]\n\n"

        if stream_requested(body):
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({"usage": {"total_tokens": 7}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def _metered_post(app: Starlette, stream, timeout_s: float = 30) -> tuple[str, list[int]]:
    key = APIKey("k" * 16, "few-tokens", tokens_per_minute=60)
    settings = RouterSettings(routes=ROUTES, api_keys=(key,), request_timeout_s=timeout_s)
    spent = SpentTokens()
    guard = one_hop_policy(app, settings, spent)
    response = await _chat(guard, key, json={"messages": [], "stream": stream})
    assert response.status_code == 200
    return response.text, spent.spent


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [True, 1, "true"])
async def test_every_spelling_of_stream_is_metered(stream):
    text, spent = await _metered_post(_usage_app(), stream)
    assert '"usage"' not in text and spent == [42]  # usage not asked for, and not shown


@pytest.mark.asyncio
async def test_a_stream_cut_by_the_timeout_is_charged_what_it_generated():
    text, spent = await _metered_post(_usage_app(hang=True), True, timeout_s=TIMEOUT_S)
    assert '"code":"timeout"' in text.replace(" ", "") and spent == [22]


ROUTER = PolicyMount("router", frozenset(VLLM_ENDPOINTS))


@pytest.mark.asyncio
@pytest.mark.parametrize("mount", [ROUTER, ONE_HOP], ids=["router", "one-hop"])
async def test_a_stream_cut_before_its_first_usage_is_charged_its_prompt_on_either_path(mount):
    """A client that leaves (here: the timeout) while the prompt is read got no chunk with usage:
    charged the prompt's guessed tokens, the work done, not 0."""
    key = APIKey("k" * 16, "few-tokens", tokens_per_minute=10_000)
    settings = RouterSettings(routes=ROUTES, api_keys=(key,), request_timeout_s=TIMEOUT_S)
    spent = SpentTokens()
    policy = RequestPolicy(_model_app(asyncio.Event(), 0), settings, mount, spent)
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "stream": True}
    cut = await _chat(policy, key, json=body)
    assert '"code":"timeout"' in cut.text.replace(" ", "")
    assert spent.spent == [guessed_prompt_tokens(body)] and spent.spent[0] >= 100


@pytest.mark.asyncio
@pytest.mark.parametrize("mount", [ROUTER, ONE_HOP], ids=["router", "one-hop"])
async def test_an_answer_cut_before_it_finished_is_charged_its_reservation_on_either_path(mount):
    """A JSON answer carries its usage only at its end: one cut by the timeout (or left by its
    client just before the end) is charged what it reserved, not 0."""
    key = APIKey("k" * 16, "few-tokens", tokens_per_minute=60)
    settings = RouterSettings(routes=ROUTES, api_keys=(key,), request_timeout_s=TIMEOUT_S)
    spent = SpentTokens()
    policy = RequestPolicy(_model_app(asyncio.Event(), 0), settings, mount, spent)
    cut = await _chat(policy, key, json={"model": "m", "messages": [], "max_tokens": 20})
    assert cut.status_code == 504 and spent.reserved == [20] and spent.spent == [20]
    answered = RequestPolicy(_usage_app(), settings, mount, SpentTokens())
    assert (await _chat(answered, key, json={"model": "m", "messages": []})).status_code == 200
    assert answered.limits.spent == [7]  # a finished answer: its own usage


@pytest.mark.asyncio
@pytest.mark.parametrize("mount", [ROUTER, ONE_HOP], ids=["router", "one-hop"])
async def test_past_its_deployments_capacity_a_request_is_refused_at_once_on_either_path(mount):
    """Two slots (running + queued) taken by requests that hang: the next four get the 503 with
    Retry-After at once, the model's work never called; a slot comes back when its request ends."""
    route = ModelRoute(
        "m", "vllm", "m-dep", (Capability.CHAT,), router_capacity=2, replica_capacity=2
    )
    cancelled = asyncio.Event()
    policy = RequestPolicy(_model_app(cancelled, 0), RouterSettings(routes={"m": route}), mount)
    transport = httpx.ASGITransport(app=policy)
    body = {"model": "m", "messages": []}
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        hanging = [
            asyncio.create_task(client.post("/v1/chat/completions", json=body)) for _ in range(2)
        ]
        await asyncio.sleep(0.2)
        # At once: answered while both slots' requests still hang (they end only when cancelled,
        # so a policy that waited for a slot would never answer: wait_for's bound fails it)
        refused = await asyncio.wait_for(
            asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(4))),
            timeout=60,
        )
        assert not [task for task in hanging if task.done()]
        for response in refused:
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "server_busy"
        hanging[0].cancel()
        await asyncio.gather(*hanging[:1], return_exceptions=True)
        assert list(policy.capacities.values())[0].in_flight == 1  # its slot came back
        hanging[1].cancel()
        await asyncio.gather(*hanging[1:], return_exceptions=True)
    assert list(policy.capacities.values())[0].in_flight == 0


VARIANT = ModelRoute("m", "vllm", "m-dep", (Capability.CHAT,), replica_capacity=1).variant_route(
    "v1"
)
WITH_VARIANT = {"m": dataclasses.replace(ROUTES["m"], replica_capacity=1), "m:v1": VARIANT}


async def _stalled_body():
    yield b'{"model": "m", '
    await asyncio.sleep(3600)  # a client that never sends the rest


@pytest.mark.asyncio
async def test_a_body_that_never_arrives_is_cut_by_the_timeout_and_frees_its_slot():
    cancelled = asyncio.Event()
    settings = RouterSettings(routes=WITH_VARIANT, request_timeout_s=TIMEOUT_S)
    policy = one_hop_policy(_model_app(cancelled, 0), settings)
    stalled = await _chat(policy, content=_stalled_body())
    assert stalled.status_code == 504 and stalled.json()["error"]["code"] == "timeout"
    assert all(c.in_flight == 0 for c in policy.capacities.values())


class RefusingLimits:
    """Limits that refuse every request of a limited key, counting what they were asked."""

    def __init__(self):
        self.asked = 0

    async def admit(self, key, reserve_tokens=0, hold_s=None):
        self.asked += 1
        raise APIError(429, "over", code="rate_limit_exceeded")


@pytest.fixture
def fetches(monkeypatch) -> list[str]:
    seen: list[str] = []

    async def fetch(url, policy, budget):
        seen.append(url)
        return b"png", "image/png"

    monkeypatch.setattr(media_refs, "fetch_media", fetch)
    return seen


def _media_chat(model: str) -> dict:
    parts = [{"image_url": {"url": f"http://img/{n}.png"}} for n in range(3)]
    return {"model": model, "messages": [{"role": "user", "content": parts}]}


@pytest.mark.asyncio
@pytest.mark.parametrize("mount", [ROUTER, ONE_HOP], ids=["router", "one-hop"])
async def test_a_key_over_its_limit_costs_no_media_download(mount, fetches):
    key = APIKey("k" * 16, "limited", requests_per_minute=1)
    limits = RefusingLimits()
    settings = RouterSettings(routes=ROUTES, api_keys=(key,))
    policy = RequestPolicy(_usage_app(), settings, mount, limits)
    refused = await _chat(policy, key, json=_media_chat("m"))
    assert refused.status_code == 429 and limits.asked == 1 and fetches == []


@pytest.mark.asyncio
async def test_an_unknown_model_is_a_404_before_any_work_as_one_outside_the_keys_scope(fetches):
    key = APIKey("k" * 16, "limited", requests_per_minute=1)
    limits = RefusingLimits()
    settings = RouterSettings(routes=ROUTES, api_keys=(key,))
    policy = RequestPolicy(_usage_app(), settings, ROUTER, limits)
    unknown = await _chat(policy, key, json=_media_chat("nope"))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert limits.asked == 0 and fetches == []


@pytest.mark.asyncio
async def test_a_variant_that_fails_to_load_returns_the_requests_reservation():
    async def failing_load(model):
        raise APIError(503, "the variant did not load", code="model_unavailable")

    key = APIKey("k" * 16, "few-tokens", tokens_per_minute=60)
    spent = SpentTokens()
    mount = dataclasses.replace(ONE_HOP, on_model=failing_load)
    settings = RouterSettings(routes=ROUTES, api_keys=(key,))
    policy = RequestPolicy(_usage_app(), settings, mount, spent)
    failed = await _chat(policy, key, json={"model": "m", "messages": []})
    assert failed.status_code == 503 and spent.spent == [0]  # settled: the reservation returned


@pytest.mark.asyncio
async def test_a_key_scoped_to_a_variant_reaches_it_on_the_one_hop_url_as_on_the_router():
    key = APIKey("k" * 16, "variant-only", ("m:v1",))
    settings = RouterSettings(routes=WITH_VARIANT, api_keys=(key,))
    for mount in (ROUTER, ONE_HOP):
        policy = RequestPolicy(_usage_app(), settings, mount)
        variant = await _chat(policy, key, json={"model": "m:v1", "messages": []})
        base = await _chat(policy, key, json={"model": "m", "messages": []})
        assert (variant.status_code, base.status_code) == (200, 404), mount.metrics_path


def _vllm_models_app() -> Starlette:
    """vLLM's ``/v1/models`` as a replica with two LoRA adapters answers it, whatever the key."""

    async def models(request):
        cards = [{"id": name, "object": "model", "root": f"/m/{name}"} for name in ("m", "m:v1")]
        return JSONResponse({"object": "list", "data": [*cards, {"id": "m:v2", "parent": "m"}]})

    return Starlette(routes=[Route("/v1/models", models)])


async def _listed(policy: RequestPolicy, key: APIKey) -> list[str]:
    transport = httpx.ASGITransport(app=policy)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        answer = await client.get("/v1/models", headers={"Authorization": f"Bearer {key.secret}"})
    assert answer.status_code == 200 and answer.json()["object"] == "list"
    return [card["id"] for card in answer.json()["data"]]


@pytest.mark.asyncio
async def test_the_one_hop_model_list_shows_only_the_models_in_the_keys_scope():
    variant_only = APIKey("v" * 16, "variant-only", ("m:v1",))
    every_model = APIKey("e" * 16, "every-model")
    settings = RouterSettings(routes=WITH_VARIANT, api_keys=(variant_only, every_model))
    mount = dataclasses.replace(ONE_HOP, model_list="/v1/models")
    policy = RequestPolicy(_vllm_models_app(), settings, mount)
    assert await _listed(policy, variant_only) == ["m:v1"]
    assert await _listed(policy, every_model) == ["m", "m:v1", "m:v2"]


@pytest.mark.asyncio
async def test_an_adapter_outside_the_scope_is_refused_as_an_unknown_model_on_either_path():
    key = APIKey("k" * 16, "variant-only", ("m:v1",))
    routes = {**WITH_VARIANT, "m:v2": WITH_VARIANT["m"].variant_route("v2")}
    settings = RouterSettings(routes=routes, api_keys=(key,))
    for mount in (ROUTER, ONE_HOP):
        policy = RequestPolicy(_usage_app(), settings, mount)
        outside = await _chat(policy, key, json={"model": "m:v2", "messages": []})
        unknown = await _chat(policy, key, json={"model": "m:v3", "messages": []})
        assert outside.status_code == unknown.status_code == 404, mount.metrics_path
        assert outside.json()["error"] == {
            **unknown.json()["error"],
            "message": unknown.json()["error"]["message"].replace("'m:v3'", "'m:v2'"),
        }, mount.metrics_path


@pytest.mark.asyncio
@pytest.mark.parametrize("mount", [ROUTER, ONE_HOP], ids=["router", "one-hop"])
async def test_a_slot_is_free_once_the_answers_last_byte_went_out(mount):
    """HAProxy lets the next request in when the last byte of an answer passes it: the slot must
    be free by then, not only once the request's clean-up ran (which a busy process runs late)."""
    route = ModelRoute(
        "m", "vllm", "m-dep", (Capability.CHAT,), router_capacity=1, replica_capacity=1
    )
    answered, finish = asyncio.Event(), asyncio.Event()

    async def chat(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        answered.set()
        await finish.wait()  # still running after its answer: its clean-up is late

    policy = RequestPolicy(chat, RouterSettings(routes={"m": route}), mount)
    body = {"model": "m", "messages": []}
    first = asyncio.create_task(_chat(policy, json=body))
    await asyncio.wait_for(answered.wait(), timeout=60)
    assert list(policy.capacities.values())[0].in_flight == 0
    finish.set()
    assert (await first).status_code == 200
    assert (await _chat(policy, json=body)).status_code == 200
    assert list(policy.capacities.values())[0].in_flight == 0
