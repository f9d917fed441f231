"""``ServeEngineCaller``: a call cancelled (by the request policy's timeout, or a client that left)
cancels the engine's work, a retry when a replica dies before answering, a 503 at once when none
is running.
Serve handles are replaced by fakes with the same calling shape (``options().method.remote()``)."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError

from configs.server_models import Capability
from serve.router.errors import APIError
from serve.router.router import ServeEngineCaller
from serve.router.routing import ModelRoute

ROUTE = ModelRoute("chat", "vllm", "chat-dep", (Capability.CHAT,))


class FakeResponse:
    """A DeploymentResponse(Generator): awaitable or async-iterable, and cancellable."""

    def __init__(self, delays: list[float], died: bool = False):
        self.delays, self.cancelled, self.died = list(delays), False, died

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self):
        await asyncio.sleep(self.delays[0])
        if self.died:
            raise ActorDiedError()
        return "answer"

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.delays:
            raise StopAsyncIteration
        await asyncio.sleep(self.delays.pop(0))
        if self.died:
            raise ActorDiedError()
        return "chunk"

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    """``dead_replicas``: how many calls in a row land on a replica that died."""

    _router = None  # Serve's router is not consulted: replicas unknown

    def __init__(self, delays, dead_replicas: int = 0):
        self.responses: list[FakeResponse] = []
        self.delays, self.dead_replicas = delays, dead_replicas

    def options(self, **_):
        return self

    def __getattr__(self, method):
        return self

    def remote(self, *args):
        self.responses.append(
            FakeResponse(self.delays, died=len(self.responses) < self.dead_replicas)
        )
        return self.responses[-1]


NEVER = 3600  # a step that never comes within a test's timeout


def _caller(delays, dead_replicas=0) -> tuple[ServeEngineCaller, FakeHandle]:
    handle = FakeHandle(delays, dead_replicas)
    return ServeEngineCaller({"chat-dep": handle}), handle


async def _within(seconds: float, awaitable):
    """``awaitable`` cut at ``seconds``, as the request policy's timeout cuts a request."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        return "cut"


def test_a_call_cut_by_the_timeout_cancels_the_engine_call():
    caller, handle = _caller([NEVER])
    assert asyncio.run(_within(0.5, caller.call(ROUTE, Capability.CHAT, {}))) == "cut"
    assert handle.responses[0].cancelled


def test_a_call_answers():
    caller, _ = _caller([0])
    assert asyncio.run(caller.call(ROUTE, Capability.CHAT, {})) == "answer"


CHAT_BODY = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}]}


async def _collect(caller, route=ROUTE, seconds: float = 30, body=CHAT_BODY) -> list:
    got: list = []

    async def read():
        try:
            async for item in caller.stream(route, Capability.CHAT, body):
                got.append(item)
        except APIError as err:
            got.append(err.status_code)

    if await _within(seconds, read()) == "cut":
        got.append("cut")
    return got


@pytest.mark.parametrize(
    "delays,expected",
    [
        ([NEVER], ["cut"]),  # no output: cut before the first chunk
        ([0, 0, NEVER], ["chunk", "chunk", "cut"]),  # cut mid-stream
        ([0, 0], ["chunk", "chunk"]),
    ],
)
def test_a_stream_is_released_however_it_ends(delays, expected):
    caller, handle = _caller(delays)
    assert asyncio.run(_collect(caller, seconds=0.5)) == expected
    assert handle.responses[0].cancelled


@pytest.mark.parametrize("stream", [False, True])
def test_a_replica_that_died_before_answering_is_retried_once_on_another(stream):
    caller, handle = _caller([0], dead_replicas=1)
    got = (
        asyncio.run(_collect(caller))
        if stream
        else asyncio.run(caller.call(ROUTE, Capability.CHAT, {}))
    )
    assert got == (["chunk"] if stream else "answer") and len(handle.responses) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_two_dead_replicas_in_a_row_are_a_503_to_retry(stream):
    caller, handle = _caller([0], dead_replicas=2)
    if stream:
        assert asyncio.run(_collect(caller)) == [503]
    else:
        with pytest.raises(APIError) as info:
            asyncio.run(caller.call(ROUTE, Capability.CHAT, {}))
        assert info.value.status_code == 503 and info.value.headers["Retry-After"]
    assert len(handle.responses) == 2


class _ServeRouter:
    """The parts of Serve's router ``routable_replicas`` reads."""

    def __init__(self, replicas: int):
        self.replicas = {i: object() for i in range(replicas)}
        request_router = type("RequestRouter", (), {"curr_replicas": self.replicas})
        self._asyncio_router = type("AsyncioRouter", (), {"_request_router": request_router})


def _watched(delays, replicas: int) -> tuple[ServeEngineCaller, FakeHandle, _ServeRouter]:
    caller, handle = _caller(delays)
    handle._router = _ServeRouter(replicas)
    handle.running_replicas_populated = lambda: True
    return caller, handle, handle._router


@pytest.mark.parametrize(
    "replicas,min_replicas,refused", [(0, 1, True), (1, 1, False), (0, 0, False)]
)
def test_a_model_without_a_running_replica_is_a_503_at_once(replicas, min_replicas, refused):
    """Unless it scales to zero on purpose: then the request waits for the replica it starts."""
    caller, handle, _ = _watched([0.01], replicas)
    route = ModelRoute("chat", "vllm", "chat-dep", (Capability.CHAT,), min_replicas=min_replicas)
    assert asyncio.run(_collect(caller, route)) == ([503] if refused else ["chunk"])
    assert handle.responses[0].cancelled  # a refused request leaves nothing queued


@pytest.mark.parametrize("replicas,min_replicas,checked", [(0, 0, True), (1, 0, False)])
def test_a_malformed_body_to_a_model_scaled_to_zero_starts_no_replica(
    replicas, min_replicas, checked
):
    """With no replica running, the router checks the body with vLLM's rules first: a 400, and
    nothing sent to Serve (which would start a replica to refuse it). A running replica checks
    it itself."""
    caller, handle, _ = _watched([0.01], replicas)
    route = ModelRoute("chat", "vllm", "chat-dep", (Capability.CHAT,), min_replicas=min_replicas)
    body = {**CHAT_BODY, "temperature": "hot"}
    assert asyncio.run(_collect(caller, route, body=body)) == ([400] if checked else ["chunk"])
    assert len(handle.responses) == (0 if checked else 1)


@pytest.mark.parametrize("stream", [False, True])
def test_requests_waiting_when_the_last_replica_goes_are_refused_then(stream):
    caller, handle, router = _watched([3], replicas=1)

    async def lose_the_replica_while_waiting():
        asyncio.get_running_loop().call_later(0.3, router.replicas.clear)
        if stream:
            return await _collect(caller)
        try:
            return await caller.call(ROUTE, Capability.CHAT, {})
        except APIError as err:
            return [err.status_code, err.headers["Retry-After"]]

    got = asyncio.run(lose_the_replica_while_waiting())
    assert got == [503] if stream else got == [503, "5"]
    assert handle.responses[0].cancelled


@pytest.mark.asyncio
async def test_phases_are_read_from_the_controller_at_most_once_per_ttl(monkeypatch):
    from serve.platform_status import ModelPhase
    from serve.router import router

    reads = []
    phase = ModelPhase("p.chat", ("chat",), "ready", "1/1 replicas running", 1, 1)
    monkeypatch.setattr(router, "phases_by_model", lambda: reads.append(1) or {"chat": phase})
    caller = ServeEngineCaller({})
    assert await caller.phases() == {"chat": phase}
    assert await caller.phases() == {"chat": phase}
    assert len(reads) == 1  # /ready polled often costs one controller read per PHASES_TTL_S

    def controller_away():
        raise ConnectionError("controller away")

    monkeypatch.setattr(router, "phases_by_model", controller_away)
    monkeypatch.setattr(router, "PHASES_TTL_S", 0)
    assert await caller.phases() == {}  # /ready still answers, from its probes


SMALL = ModelRoute("vit", "vision", "vit-dep", (Capability.CLASSIFY,), router_capacity=2)


class _ReplicaActor:
    """A replica's actor as Serve's router holds it: its routing stats answered at once."""

    def __init__(self):
        self.record_routing_stats = self
        self.calls = 0

    def remote(self):
        self.calls += 1
        return FakeResponse([0])


def test_a_stats_probe_asks_a_replicas_actor_outside_the_request_queue():
    """Once Serve's router here knows the replicas, the probe goes to one of their actors, past
    the deployment's queue: with every slot taken it still answers, and no request is queued."""
    caller, handle, router = _watched([NEVER], replicas=1)
    actor = _ReplicaActor()
    router.replicas[0] = type("RunningReplica", (), {"_actor_handle": actor})()
    small = ModelRoute("vit", "vision", "chat-dep", (Capability.CLASSIFY,), router_capacity=2)
    capacity = caller.capacities.of(small, small.router_capacity)
    assert capacity is not None
    capacity.acquire()
    capacity.acquire()
    assert asyncio.run(caller._stats(small, timeout_s=5)) == "answer"
    assert actor.calls == 1 and not handle.responses


def test_before_the_replicas_are_known_a_probe_takes_no_slot_a_user_needs():
    """Through Serve's queue, in a deployment of two slots: with both taken by requests the
    probe is not sent at all; with one free it is sent and holds that slot until answered."""
    handle = FakeHandle([0.2])
    caller = ServeEngineCaller({"vit-dep": handle})
    capacity = caller.capacities.of(SMALL, SMALL.router_capacity)
    assert capacity is not None
    capacity.acquire()
    capacity.acquire()
    assert asyncio.run(caller._stats(SMALL, timeout_s=5)) is None and not handle.responses
    capacity.release()

    async def probe_while_counting():
        probe = asyncio.create_task(caller._stats(SMALL, timeout_s=5))
        await asyncio.sleep(0.05)
        held = capacity.in_flight
        return held, await probe

    assert asyncio.run(probe_while_counting()) == (2, "answer")
    assert capacity.in_flight == 1  # the probe's slot came back


def test_a_stats_probe_that_times_out_leaves_serves_queue():
    caller, handle = _caller([NEVER])
    assert asyncio.run(caller._stats(ROUTE, timeout_s=0.1)) is None
    assert handle.responses[0].cancelled
