"""Stream helpers shared by engines and the router."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
from pydantic import TypeAdapter, ValidationError
from starlette.responses import StreamingResponse
from starlette.types import Send


async def coalesce(source: AsyncIterator[str], min_interval_s: float = 0.0) -> AsyncIterator[str]:
    """Re-yield ``source``, joining the chunks that arrive between two sends.

    Each item yielded by a Serve streaming call costs one Ray object between replicas,
    about as much CPU as vLLM spends on a decode step of a small model. The first chunk
    leaves at once (TTFT is untouched); later sends are at least ``min_interval_s``
    apart and carry everything produced meanwhile, so the cost per token shrinks as the
    load grows; the last leaves as soon as the source ends. Closing this generator (client
    gone) cancels ``source``, which aborts its request in the engine.
    """
    pending: list[str] = []
    ready, finished = asyncio.Event(), asyncio.Event()

    async def pump() -> None:
        try:
            async for chunk in source:
                pending.append(chunk)
                ready.set()
        finally:
            finished.set()
            ready.set()

    task = asyncio.create_task(pump())
    try:
        while True:
            await ready.wait()
            ready.clear()
            if pending:
                batch = "".join(pending)
                pending.clear()
                yield batch
                if min_interval_s and not finished.is_set():
                    # The wait ends early when the source does: the last tokens leave at once
                    # instead of up to an interval later (a stream's whole length, at one user).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min_interval_s):
                            await finished.wait()
            if finished.is_set() and not pending:
                break
        await task  # re-raise an error from the source
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def is_event_stream(headers) -> bool:
    """Whether the headers of an ASGI ``http.response.start`` announce server-sent events."""
    return any(
        k.lower() == b"content-type" and v.startswith(b"text/event-stream")
        for k, v in headers or ()
    )


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that closes its body's generator when the stream ends, however.

    When the client leaves while a chunk is being sent, Starlette cancels the send and leaves
    the generator suspended at its ``yield`` for the garbage collector to close, possibly much
    later; until then the engine call behind it goes on generating for nobody.
    """

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):  # the stream's task is being cancelled
                    await aclose()


_BOOLEAN = TypeAdapter(bool)


def stream_requested(body: dict) -> bool:
    """Whether vLLM streams its answer to ``body``: ``stream`` read as vLLM's pydantic request
    models read it (``1``, ``"true"``, ``"on"`` stream; ``"false"`` does not). A value pydantic
    refuses streams nothing: vLLM answers it with a 400."""
    try:
        return _BOOLEAN.validate_python(body.get("stream", False))
    except ValidationError:
        return False
