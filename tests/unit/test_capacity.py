"""Capacity: a deployment's running + queued requests taken in, the next refused at once."""

import asyncio
import dataclasses
import json

import httpx
import pytest

from common.engine_response import EngineResponse
from configs import load_platform_config
from configs.deployment_capacity import deployment_limits, replica_limit, router_limit
from serve.policy.capacity import Capacity, GatePublisher, ingress_gate
from serve.router.app import router_policy
from serve.router.errors import APIError
from serve.router.routing import RouterSettings, config_routes
from tests.unit.router_fakes import TENSOR_ROUTES, FakeEngines


def test_refuses_at_once_once_every_slot_is_taken_and_admits_again_when_one_frees():
    capacity = Capacity(3, name="tiny-chat")
    held = [capacity.admit() for _ in range(3)]
    for slot in held:
        slot.__enter__()
    assert capacity.full and capacity.in_flight == 3
    with pytest.raises(APIError) as refused:
        capacity.acquire()
    err = refused.value
    assert (err.status_code, err.code, err.headers) == (503, "server_busy", {"Retry-After": "1"})
    assert err.message == "tiny-chat is at capacity; retry shortly"
    assert capacity.in_flight == 3  # a refusal takes no slot
    held[0].__exit__(None, None, None)
    with capacity.admit():
        assert capacity.in_flight == 3
    assert capacity.in_flight == 2


def test_a_slot_is_given_back_when_the_request_fails_or_is_cancelled():
    capacity = Capacity(1)
    with pytest.raises(ValueError), capacity.admit():
        raise ValueError("the engine failed")
    assert capacity.in_flight == 0

    async def held_until_cancelled():
        with capacity.admit():
            await asyncio.sleep(3600)

    async def scenario():
        task = asyncio.create_task(held_until_cancelled())
        await asyncio.sleep(0)
        assert capacity.full
        task.cancel()  # the client left mid-stream
        with pytest.raises(asyncio.CancelledError):
            await task
        assert capacity.in_flight == 0

    asyncio.run(scenario())


def test_a_burst_on_one_loop_gets_exactly_the_limit_and_the_rest_refused_without_waiting():
    capacity = Capacity(12)

    async def one(release: asyncio.Event) -> int:
        try:
            with capacity.admit():
                await release.wait()
                return 200
        except APIError as err:
            return err.status_code

    async def burst():
        release = asyncio.Event()
        tasks = [asyncio.create_task(one(release)) for _ in range(36)]
        await asyncio.sleep(0)  # one pass of the loop: every refusal is decided already
        refused = [t for t in tasks if t.done()]
        release.set()
        return [await t for t in tasks], len(refused)

    statuses, refused_in_one_pass = asyncio.run(burst())
    assert statuses.count(200) == 12 and statuses.count(503) == 24
    assert refused_in_one_pass == 24
    assert capacity.in_flight == 0


def test_no_limit_admits_everything_and_a_limit_can_change_while_requests_are_in():
    unbounded = Capacity(None)
    for _ in range(1000):
        unbounded.acquire()
    assert not unbounded.full and unbounded.in_flight == 1000

    capacity = Capacity(4)
    for _ in range(3):
        capacity.acquire()
    capacity.limit = 2  # a redeploy with a smaller queue: the three in count against it
    assert capacity.full
    capacity.release()
    capacity.release()
    capacity.acquire()
    with pytest.raises(ValueError, match="at least 1"):
        capacity.limit = 0
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        Capacity(1).release()


@pytest.mark.parametrize(
    "options,routers,router,replica",
    [
        ({"max_ongoing_requests": 4, "max_queued_requests": 8}, 1, 12, 12),
        ({"max_ongoing_requests": 64, "max_queued_requests": 128, "num_replicas": 3}, 1, 320, 192),
        (
            {
                "max_ongoing_requests": 64,
                "max_queued_requests": 128,
                "autoscaling_config": {"min_replicas": 0, "max_replicas": 2},
            },
            1,
            256,  # the running slots at the most replicas it may run
            192,
        ),
        ({"max_ongoing_requests": 5, "max_queued_requests": 10, "num_replicas": 3}, 2, 18, 15),
        ({"max_queued_requests": 8}, 1, 13, 13),  # Serve's default of 5 running
        ({"max_ongoing_requests": 4, "max_queued_requests": -1}, 1, None, None),
        ({"max_ongoing_requests": 4}, 1, None, None),  # Serve's default queue: unbounded
    ],
)
def test_limits_from_serve_options(options, routers, router, replica):
    assert router_limit(options, routers) == router
    assert replica_limit(options) == replica


def _vision(model_id, group=None):
    entry = {
        "model_loading_config": {"model_id": model_id, "model_source": "org/vit", "type": "vision"},
        "engine_kwargs": {"task": "image-classification", "max_batch_size": 4},
        "deployment_config": {"num_replicas": 2},
    }
    if group:
        entry = {**entry, "group": group, "deployment_config": {}}
    return entry


def test_limits_per_deployment_from_the_options_it_is_deployed_with():
    config = load_platform_config(
        {
            "models": [_vision("a", "small"), _vision("b", "small"), _vision("c")],
            "groups": [
                {
                    "name": "small",
                    "deployment_config": {"max_ongoing_requests": 10, "max_queued_requests": 30},
                }
            ],
        }
    )
    # c: 16 full batches of 4 running per replica, and the default queue the config gives it
    # (configs.bounded_queue: 2 per running slot at its most replicas)
    running = 16 * 4
    assert deployment_limits(config, "router") == {"small": 40, "c": 2 * running + 4 * running}
    assert deployment_limits(config, "router", routers=2) == {"small": 35, "c": 64 + 4 * running}
    assert deployment_limits(config, "replica") == {"small": 40, "c": running + 4 * running}


def test_haproxy_is_handed_the_limits_this_process_counts(tmp_path, monkeypatch):
    """The router's: each deployment's per router process, named by its models in the bodies of
    its endpoints; a replica's own URL: its deployment's per replica; published when they change."""
    config = load_platform_config(
        {
            "models": [_vision("a", "small"), _vision("b", "small"), _vision("c")],
            "groups": [{"name": "small", "deployment_config": {"max_queued_requests": 30}}],
        }
    )
    routes = config_routes(config, app_name="platform.c")
    router = ingress_gate(routes, None, ["/v1/x"])["router"]
    assert router["models"] == {"a": "small", "b": "small", "c": "c"}
    assert router["limits"] == deployment_limits(config, "router")
    assert router["endpoints"] == ["/v1/x"]
    assert ingress_gate(routes, "c", []) == {
        "direct": {"deployment": "c", "per_server": deployment_limits(config, "replica")["c"]}
    }
    assert ingress_gate({}, None, ["/v1/x"]) == {} == ingress_gate(routes, "gone", [])

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(tmp_path / "haproxy.cfg"))
    published = tmp_path / "capacity" / "platform.c.json"
    publisher = GatePublisher("platform.c", "c", [])
    publisher.check(routes)
    assert json.loads(published.read_text())["direct"]["deployment"] == "c"
    published.unlink()
    publisher.check(routes)  # checked at most every CHECK_S
    assert not published.exists()
    GatePublisher(None, "c", []).check(routes)  # outside Serve: nothing
    assert not published.exists()


class HangingEngines(FakeEngines):
    """Engines whose calls hang until ``release`` is set: the requests in hold their slots."""

    def __init__(self):
        super().__init__()
        self.release = asyncio.Event()

    async def call(self, route, capability, body):
        await super().call(route, capability, body)  # recorded
        await self.release.wait()
        return EngineResponse.json({"outputs": []})  # an answer on either route


UPLOAD = {"data": {"model": "asr"}, "files": {"file": ("a.wav", b"RIFF....WAVE", "audio/wav")}}
IMAGE = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["QUJD"]}
INFER = {"json": {"inputs": [IMAGE]}}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "model,path,request_args",
    [
        ("asr", "/v1/audio/transcriptions", UPLOAD),
        ("vit", "/v2/models/vit/infer", INFER),
    ],
    ids=["upload", "v2"],
)
async def test_uploads_and_v2_inferences_past_capacity_are_refused_at_once(
    model, path, request_args
):
    """The routes that read their own bodies take the policy's slots too: with both of the
    deployment's slots held by calls that hang, the next four are 503s with Retry-After (in the
    endpoint's error shape) while those still hang, and never reach the engine."""
    routes = {**TENSOR_ROUTES, model: dataclasses.replace(TENSOR_ROUTES[model], router_capacity=2)}
    engines = HangingEngines()
    policy = router_policy(RouterSettings(routes), engines)
    transport = httpx.ASGITransport(app=policy)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        hanging = [asyncio.create_task(client.post(path, **request_args)) for _ in range(2)]
        while len(engines.calls) < 2:
            await asyncio.sleep(0.01)
        # at once: a policy that waited for a slot would never answer (wait_for's bound fails it)
        refused = await asyncio.wait_for(
            asyncio.gather(*(client.post(path, **request_args) for _ in range(4))), timeout=60
        )
        assert not [task for task in hanging if task.done()]
        for response in refused:
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            error = response.json()["error"]
            if path.startswith("/v2/"):  # the Open Inference Protocol's shape
                assert error == f"{routes[model].deployment_name} is at capacity; retry shortly"
            else:
                assert error["code"] == "server_busy"
        assert len(engines.calls) == 2
        engines.release.set()
        assert [r.status_code for r in await asyncio.gather(*hanging)] == [200, 200]
    assert [c.in_flight for c in policy.capacities.values()] == [0]
