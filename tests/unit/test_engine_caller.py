"""``ServeEngineCaller``'s request timeout: a 504 before any output, the engine call cancelled.
Serve handles are replaced by fakes with the same calling shape (``options().method.remote()``)."""

import asyncio

import pytest

from configs.server_models import Capability
from serve.router.errors import APIError
from serve.router.router import ServeEngineCaller
from serve.router.routing import ModelRoute

ROUTE = ModelRoute("chat", "vllm", "chat-dep", (Capability.CHAT,))


class FakeResponse:
    """A DeploymentResponse(Generator): awaitable or async-iterable, and cancellable."""

    def __init__(self, delays: list[float]):
        self.delays, self.cancelled = list(delays), False

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self):
        await asyncio.sleep(self.delays[0])
        return "answer"

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.delays:
            raise StopAsyncIteration
        await asyncio.sleep(self.delays.pop(0))
        return "chunk"

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    def __init__(self, delays):
        self.responses: list[FakeResponse] = []
        self.delays = delays

    def options(self, **_):
        return self

    def __getattr__(self, method):
        return self

    def remote(self, *args):
        self.responses.append(FakeResponse(self.delays))
        return self.responses[-1]


def _caller(delays, timeout_s=0.2) -> tuple[ServeEngineCaller, FakeHandle]:
    handle = FakeHandle(delays)
    return ServeEngineCaller({"chat-dep": handle}, timeout_s), handle


def test_a_call_past_the_timeout_is_a_504_and_is_cancelled():
    caller, handle = _caller([5])
    with pytest.raises(APIError) as info:
        asyncio.run(caller.call(ROUTE, Capability.CHAT, {}))
    assert info.value.status_code == 504 and info.value.code == "timeout"
    assert handle.responses[0].cancelled


def test_a_call_within_the_timeout_answers():
    caller, _ = _caller([0.01])
    assert asyncio.run(caller.call(ROUTE, Capability.CHAT, {})) == "answer"


async def _collect(caller) -> list:
    got = []
    try:
        async for item in caller.stream(ROUTE, Capability.CHAT, {}):
            got.append(item)
    except APIError as err:
        got.append(err.status_code)
    return got


@pytest.mark.parametrize("delays,expected", [
    ([5], [504]),  # no output before the deadline: the router answers 504
    ([0.01, 0.01, 5], ["chunk", "chunk", 504]),  # the deadline covers the whole stream
    ([0.01, 0.01], ["chunk", "chunk"]),
])
def test_the_timeout_covers_the_whole_stream(delays, expected):
    caller, handle = _caller(delays)
    assert asyncio.run(_collect(caller)) == expected
    assert handle.responses[0].cancelled  # a stream is always released
