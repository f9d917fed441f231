import asyncio
import gc
from itertools import pairwise

import pytest

from common.streaming import ClosingStreamingResponse, coalesce


async def _source(items, delay, state):
    try:
        for item in items:
            await asyncio.sleep(delay)
            yield item
        state["finished"] = True
    finally:
        state["closed"] = True


@pytest.mark.asyncio
async def test_chunks_that_arrive_while_the_consumer_is_busy_are_joined():
    state = {}
    out = []
    async for batch in coalesce(_source([f"{i}," for i in range(20)], 0.001, state)):
        out.append(batch)
        await asyncio.sleep(0.01)  # a slow consumer
    assert "".join(out) == "".join(f"{i}," for i in range(20))
    assert len(out) < 20
    assert state == {"finished": True, "closed": True}


@pytest.mark.asyncio
async def test_a_fast_consumer_gets_every_chunk_without_delay():
    state = {}
    out = [batch async for batch in coalesce(_source(["a", "b", "c"], 0.02, state))]
    assert out == ["a", "b", "c"]


@pytest.mark.asyncio
async def test_closing_early_cancels_the_source():
    state = {}
    stream = coalesce(_source(["a"] * 1000, 0.001, state))
    assert await anext(stream) == "a"
    await stream.aclose()
    assert state.get("closed") and not state.get("finished")


@pytest.mark.asyncio
async def test_source_errors_propagate():
    async def broken():
        yield "a"
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError, match="engine died"):
        async for _ in coalesce(broken()):
            pass


@pytest.mark.asyncio
async def test_min_interval_sends_the_first_chunk_at_once_and_batches_the_rest():
    state = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    arrivals = []
    async for batch in coalesce(
        _source([f"{i}," for i in range(30)], 0.002, state), min_interval_s=0.03
    ):
        arrivals.append((loop.time() - start, batch))
    assert arrivals[0][1] == "0,"  # not held back: time to first token is untouched
    assert "".join(b for _, b in arrivals) == "".join(f"{i}," for i in range(30))
    assert len(arrivals) < 10
    sent_at = [at for at, _ in arrivals[:-1]]  # the last batch leaves when the source ends
    assert min(b - a for a, b in pairwise(sent_at)) >= 0.025


@pytest.mark.asyncio
async def test_the_last_batch_leaves_when_the_source_ends_not_an_interval_later():
    state = {}
    stream = coalesce(_source(["a", "b", "c"], 0.01, state), min_interval_s=3600)
    # Without the early end this waits an hour after "a" for "bc".
    out = await asyncio.wait_for(_collect(stream), timeout=30)
    assert out == ["a", "bc"]
    assert state == {"finished": True, "closed": True}


async def _collect(stream):
    return [batch async for batch in stream]


@pytest.mark.asyncio
async def test_a_client_leaving_during_a_send_closes_the_body_at_once():
    # Starlette (ASGI 2.3) cancels the stream when the client's disconnect arrives; here it does
    # while a chunk is being sent, with the generator suspended at its yield.
    closed = asyncio.Event()

    async def body():
        try:
            while True:
                yield "data: x\n\n"
        finally:
            closed.set()

    sending = asyncio.Event()

    async def send(message):
        if message["type"] == "http.response.body":
            sending.set()
            await asyncio.Event().wait()  # a client that stopped reading

    async def receive():
        await sending.wait()
        return {"type": "http.disconnect"}

    gc.disable()  # the close must not wait for the garbage collector
    try:
        scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
        await ClosingStreamingResponse(body(), media_type="text/event-stream")(scope, receive, send)
        assert closed.is_set()
    finally:
        gc.enable()
