"""Stream helpers shared by engines and the router."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def coalesce(source: AsyncIterator[str]) -> AsyncIterator[str]:
    """Re-yield ``source``, joining the chunks that arrive while the consumer is busy.

    Each item yielded by a Serve streaming call costs one Ray object between replicas.
    Yielding what accumulated since the last send (never waiting for more) adds no delay
    when the consumer keeps up, and sends fewer, larger messages when it falls behind.
    Closing this generator (client gone) cancels ``source``, which aborts its request.
    """
    pending: list[str] = []
    ready = asyncio.Event()
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for chunk in source:
                pending.append(chunk)
                ready.set()
        finally:
            finished = True
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
            if finished and not pending:
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
