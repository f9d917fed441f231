"""The one-hop guard's request timeout, around a stand-in for vLLM's ASGI app, and its token
metering."""

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from serve.deployments.one_hop_guard import OneHopGuard, _metered_send
from serve.router.routing import RouterSettings

TIMEOUT_S = 0.5


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


async def _post(stream: bool, stall_after: int = 0) -> tuple[httpx.Response, asyncio.Event]:
    cancelled = asyncio.Event()
    guard = OneHopGuard(
        _model_app(cancelled, stall_after), RouterSettings(routes={}, request_timeout_s=TIMEOUT_S)
    )
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        response = await client.post(
            "/v1/chat/completions", json={"messages": [], "stream": stream}
        )
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

    metered = _metered_send(send, None, spent.append, keep_usage_header=False)
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
