"""Run coroutines together so that none outlives a failure: the fetches of one request's media."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def all_or_none(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Each result, in order. When one fails, the others are cancelled (and waited for) before
    its error is raised as it is: ``asyncio.gather`` left them running, so a request answered
    with a 400 kept downloading after its memory was released."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_coroutine(awaitable)) for awaitable in awaitables]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable
