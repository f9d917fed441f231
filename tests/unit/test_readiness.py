"""/ready: one background refresh a second however many callers ask, none once they stop, and
process, actor and node ids shown to admins alone."""

import asyncio
import contextlib
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from configs.api_keys import APIKey
from configs.server_models import Capability
from serve.platform_status import FAILED, READY, ModelPhase
from serve.router import readiness
from serve.router.app import create_router_app
from serve.router.redaction import HIDDEN, redact_process_details
from serve.router.routing import ModelRoute, RouterSettings

ROUTES = {
    "chat": ModelRoute("chat", "vllm", "chat-dep", (Capability.CHAT,)),
    "vit": ModelRoute("vit", "vision", "vit-dep", (Capability.IMAGE_CLASSIFICATION,)),
}
PLACEMENT = {
    "node_id": "6f8e3b2a9c1d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b",
    "actor_id": "8a7c1b2e0f3d4c5b6a79800001000000",
    "pid": 48213,
    "gpu_ids": ["0"],
    "gpu_share": 0.5,
}
# Serve's message for a replica whose constructor raised, as _error_of cuts it to one line
TASK_ERROR = (
    "ray::ServeReplica:platform:vit.initialize_and_get_metadata() (pid=48213, ip=10.0.0.1, "
    "actor_id=8a7c1b2e0f3d4c5b6a79800001000000, repr=<ray.serve._private.replica.ServeReplica "
    "object at 0x7f3a2c1d9e50>) RuntimeError: CUDA error: out of memory"
)
ADMIN, USER = (
    APIKey("admin-key-0123456789", "ops", admin=True),
    APIKey("user-key-0123456789", "team"),
)


class CountingEngines:
    """Engine stats and controller phases, counting each read: one refresh reads the phases once."""

    def __init__(self):
        self.status_calls = 0
        self.phase_reads = 0
        self.vit_ready = False

    async def status(self, route, timeout_s):
        self.status_calls += 1
        await asyncio.sleep(0.01)  # a remote call: concurrent callers overlap it
        if route.deployment_name == "vit-dep" and not self.vit_ready:
            return None
        return {"unfinished_requests": 0, "placement": PLACEMENT}

    async def phases(self):
        self.phase_reads += 1
        if self.vit_ready:
            return {}
        return {"vit": ModelPhase("platform.vit-dep", ("vit",), FAILED, TASK_ERROR, 0, 1)}


@pytest.fixture
def quickly_idle(monkeypatch):
    """Refreshing stops 0.5 s after the last call (30 s in production)."""
    monkeypatch.setattr(readiness, "IDLE_AFTER_S", 0.5)


@contextlib.asynccontextmanager
async def ready_client(engines: CountingEngines):
    app = create_router_app(RouterSettings(ROUTES), engines)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://r") as http:
        yield http
    # the refresher sees no caller within IDLE_AFTER_S and ends before the next test
    await asyncio.sleep(readiness.REFRESH_EVERY_S + readiness.IDLE_AFTER_S)


async def test_concurrent_calls_cause_at_most_one_refresh_a_second(quickly_idle, monkeypatch):
    """At most one refresh per ``REFRESH_EVERY_S`` (0.3 s here, 1 s in production)."""
    monkeypatch.setattr(readiness, "REFRESH_EVERY_S", 0.3)
    engines = CountingEngines()
    async with ready_client(engines) as http:

        async def twenty_calls() -> set[int]:
            answers = await asyncio.gather(*(http.get("/ready") for _ in range(20)))
            return {answer.status_code for answer in answers}

        started = time.monotonic()
        assert await twenty_calls() == {503}
        assert (engines.phase_reads, engines.status_calls) == (1, 2)  # one refresh: both models
        for _ in range(5):
            await asyncio.sleep(0.1)
            assert await twenty_calls() == {503}
        elapsed = time.monotonic() - started
        assert 2 <= engines.phase_reads <= 1 + elapsed // readiness.REFRESH_EVERY_S
        assert engines.status_calls == 2 * engines.phase_reads


async def test_refreshing_stops_without_callers_and_the_next_call_waits_for_a_fresh_state(
    quickly_idle, monkeypatch
):
    monkeypatch.setattr(readiness, "REFRESH_EVERY_S", 0.1)
    engines = CountingEngines()
    async with ready_client(engines) as http:
        assert (await http.get("/ready")).status_code == 503
        await asyncio.sleep(0.8)  # past IDLE_AFTER_S
        stopped_at = engines.phase_reads
        await asyncio.sleep(0.3)
        assert engines.phase_reads == stopped_at
        engines.vit_ready = True
        assert (await http.get("/ready")).status_code == 200  # not the stale state
        assert engines.phase_reads == stopped_at + 1


async def test_each_answer_says_when_its_state_was_read(quickly_idle, monkeypatch):
    """``as_of``: a caller that changed something waits for an answer read after its change."""
    monkeypatch.setattr(readiness, "REFRESH_EVERY_S", 0.1)
    engines = CountingEngines()
    async with ready_client(engines) as http:
        first = (await http.get("/ready")).json()
        engines.vit_ready = True
        changed_at = time.time()
        assert first["as_of"] < changed_at
        for _ in range(100):  # 5 s at most: a refresh comes every 0.1 s
            answer = (await http.get("/ready")).json()
            if answer["as_of"] >= changed_at:
                break
            await asyncio.sleep(0.05)
        assert answer["status"] == "ready" and answer["as_of"] - changed_at < 1


class PlacedEngines(CountingEngines):
    async def phases(self):
        chat = ModelPhase("platform.chat-dep", ("chat",), READY, "2/2 running", 2, 2, NODES)
        return {**await super().phases(), "chat": chat}


NODES = ("10.213.0.11", "10.213.0.12")


def test_callers_other_than_an_admin_see_no_process_actor_or_node_ids():
    settings = RouterSettings(ROUTES, api_keys=(ADMIN, USER))
    http = TestClient(create_router_app(settings, PlacedEngines()))

    def models(key: APIKey) -> dict:
        return http.get("/ready", headers={"Authorization": f"Bearer {key.secret}"}).json()[
            "models"
        ]

    seen_by_user, seen_by_admin = models(USER), models(ADMIN)
    placement = seen_by_user["chat"]["placement"]
    assert "pid" not in placement and "actor_id" not in placement
    assert placement["gpu_ids"] == ["0"] and placement["node_id"]  # where it runs, as the console
    assert seen_by_user["vit"]["phase"] == FAILED
    assert seen_by_user["vit"]["phase_detail"] == redact_process_details(TASK_ERROR)
    assert "RuntimeError: CUDA error: out of memory" in seen_by_user["vit"]["phase_detail"]
    assert seen_by_admin["chat"]["placement"] == PLACEMENT
    assert seen_by_admin["chat"]["replicas"] == {"running": 2, "target": 2, "nodes": list(NODES)}
    assert seen_by_user["chat"]["replicas"]["nodes"] == [HIDDEN, HIDDEN]  # addresses
    assert seen_by_admin["vit"]["phase_detail"] == TASK_ERROR


def test_a_platform_without_keys_shows_everything():
    models = TestClient(create_router_app(RouterSettings(ROUTES), CountingEngines())).get("/ready")
    assert models.json()["models"]["chat"]["placement"] == PLACEMENT
    assert models.json()["models"]["vit"]["phase_detail"] == TASK_ERROR


@pytest.mark.parametrize(
    "error,kept",
    [
        (TASK_ERROR, ["ray::ServeReplica:platform:vit", "RuntimeError: CUDA error: out of memory"]),
        (  # ActorDiedError of a replica whose worker died
            "The actor died unexpectedly before finishing this task.\n"
            "\tclass_name: ServeReplica:platform:chat\n"
            "\tactor_id: 8a7c1b2e0f3d4c5b6a79800001000000\n"
            "\tpid: 48213\n"
            "\tnamespace: serve\n"
            "\tip: 10.0.0.1\n"
            "The actor is dead because its worker process has died. Worker exit type: "
            "SYSTEM_ERROR Worker exit detail: The leased worker has unrecoverable failure.",
            ["class_name: ServeReplica:platform:chat", "Worker exit type: SYSTEM_ERROR"],
        ),
        (  # Ray's memory monitor killing a replica
            "Task was killed due to the node running low on memory.\nMemory on the node (IP: "
            "10.0.0.1, ID: 6f8e3b2a9c1d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b) where the "
            "task (actor ID: 8a7c1b2e0f3d4c5b6a79800001000000, name=ServeReplica:platform:chat."
            "__init__, pid=48213, memory used=3.21GB) was running was 15.10GB / 16.00GB (0.9438)",
            ["memory used=3.21GB", "15.10GB / 16.00GB"],
        ),
        (  # a replica's node lost
            "The node with node id: 6f8e3b2a9c1d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b and "
            "address: 10.0.0.1 and node name: 10.0.0.1 has been marked dead because the "
            "detector has missed too many heartbeats from it.",
            ["has been marked dead"],
        ),
        (
            "The actor 8a7c1b2e0f3d4c5b6a79800001000000 is unavailable: RPC Error message: "
            "failed to connect to all addresses; last error: 10.0.0.1:10012: Connection refused",
            ["is unavailable", "Connection refused"],
        ),
        (  # Ray's log prefix, as a replica's error can quote it
            "(ServeReplica:platform:chat pid=48213, ip=10.0.0.1) ValueError: bad engine_kwargs",
            ["ValueError: bad engine_kwargs"],
        ),
    ],
)
def test_redaction_hides_pids_actor_and_node_ids_and_addresses(error, kept):
    redacted = redact_process_details(error)
    for secret in ("48213", "10.0.0.1", "8a7c1b2e", "6f8e3b2a", "0x7f3a"):
        assert secret not in redacted, redacted
    assert HIDDEN in redacted and all(text in redacted for text in kept), redacted


@pytest.mark.parametrize(
    "detail",
    [
        "1 replica(s) not placed: needs GPU 1, CPU 2; largest free on a node: GPU 0.5, CPU 6",
        "2/2 replicas running; downloaded 12.3 MiB in 4 s",
        "1 replica(s) starting, 0/1 running",
    ],
)
def test_redaction_leaves_the_platforms_own_phase_details_alone(detail):
    assert redact_process_details(detail) == detail


def test_only_named_keys_marked_admin_are_admins(monkeypatch):
    from configs import load_platform_settings

    monkeypatch.setenv("OPS_KEY", "ops-key-0123456789")
    monkeypatch.setenv("ALL_KEYS", "shared-key-0123456789")
    settings = load_platform_settings(
        {
            "api_keys": [{"name": "ops", "key_env": "OPS_KEY", "admin": True}],
            "api_keys_env": "ALL_KEYS",
        }
    )
    assert {key.name: key.admin for key in settings.resolved_api_keys()} == {
        "ops": True,
        "ALL_KEYS": False,
    }


async def test_a_model_added_while_serving_shows_from_the_next_refresh_and_a_removed_one_goes(
    quickly_idle, monkeypatch
):
    """The model directory adds and removes routes as model applications come and go."""
    monkeypatch.setattr(readiness, "REFRESH_EVERY_S", 0.1)
    routes = dict(ROUTES)
    app = create_router_app(RouterSettings(routes), CountingEngines())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://r") as http:
        assert set((await http.get("/ready")).json()["models"]) == {"chat", "vit"}
        routes["embed"] = ModelRoute("embed", "vllm", "embed-dep", (Capability.EMBEDDINGS,))
        del routes["vit"]
        for _ in range(100):  # 5 s at most: a refresh comes every 0.1 s
            models = set((await http.get("/ready")).json()["models"])
            if models == {"chat", "embed"}:
                break
            await asyncio.sleep(0.05)
        assert models == {"chat", "embed"}
    await asyncio.sleep(readiness.REFRESH_EVERY_S + readiness.IDLE_AFTER_S)
