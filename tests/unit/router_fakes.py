"""The router app with a stand-in engine caller, for the unit tests of the router's logic: routes
of every kind, a ``FakeEngines`` that records what reaches the engines, and the OpenAI error
shape every refusal must have."""

import asyncio

from fastapi.testclient import TestClient

from common.engine_response import EngineResponse
from common.request_ids import current_request_id
from configs.server_models import Capability
from serve.platform_status import ModelPhase
from serve.policy.key_limits import KeyLimits, SlidingWindow
from serve.router.app import create_router_app
from serve.router.routing import ModelRoute, RouterSettings

ROUTES = {
    "chat": ModelRoute("chat", "vllm", "chat-dep", (Capability.CHAT, Capability.COMPLETIONS), 256),
    "embed": ModelRoute("embed", "vllm", "embed-dep", (Capability.EMBEDDINGS,)),
    "asr": ModelRoute(
        "asr", "audio", "asr-dep", (Capability.TRANSCRIPTION,), max_upload_bytes=1000
    ),
}
ROUTES["chat:sql"] = ROUTES["chat"].variant_route("sql")
_TENSORS = {
    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}],
}
TENSOR_ROUTES = dict(ROUTES)
TENSOR_ROUTES["vit"] = ModelRoute(
    "vit",
    "vision",
    "vit-dep",
    (Capability.IMAGE_CLASSIFICATION,),
    max_upload_bytes=1000,
    tensors=_TENSORS,
)
TENSOR_ROUTES["big"] = ModelRoute(
    "big",
    "video",
    "big-dep",
    (Capability.VIDEO_CLASSIFICATION,),
    max_upload_bytes=50 * 1024 * 1024,
    tensors={**_TENSORS, "inputs": [{"name": "video", "datatype": "BYTES", "shape": [-1]}]},
)
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


class FakeEngines:
    def __init__(self):
        self.calls = []
        self.request_ids = []
        self.variants = []
        self.refuse = None  # an engine's answer to a body it cannot parse
        self.closed = asyncio.Event()

    async def call(self, route, capability, body):
        deployment = route.deployment_name
        self.request_ids.append(current_request_id.get())
        self.calls.append((deployment, capability, body))
        self.variants.append(route.variant)
        return self.refuse or EngineResponse.json(
            {"deployment": deployment, "capability": capability.value}
        )

    async def stream(self, route, capability, body):
        deployment = route.deployment_name
        self.calls.append((deployment, capability, body))
        self.variants.append(route.variant)
        try:
            if body.get("max_tokens") == 1:
                yield EngineResponse.error(400, "engine says no", param="max_tokens")
                return
            if body.get("max_tokens") in (2, 3):  # fails, or hangs, after the first chunk
                yield "data: 0\n\n"
                if body["max_tokens"] == 2:
                    raise RuntimeError("the replica died")
                await asyncio.sleep(3600)
            for i in range(3):
                yield f"data: {i}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.closed.set()

    async def status(self, route, timeout_s):
        return None if route.deployment_name == "embed-dep" else {"unfinished_requests": 0}

    async def phases(self):
        return {
            "embed": ModelPhase(
                "platform.embed-dep",
                ("embed",),
                "waiting",
                "1 replica(s) not placed: needs GPU 1; largest free on a node: GPU 0",
                0,
                1,
            ),
            "chat": ModelPhase(
                "platform.chat-dep", ("chat",), "ready", "2/2 replicas running", 2, 2
            ),
        }


def client(routes=ROUTES, **settings) -> tuple[TestClient, FakeEngines]:
    engines = FakeEngines()
    return TestClient(create_router_app(RouterSettings(routes, **settings), engines)), engines


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (
        {"message", "type", "param", "code"}
        <= set(error)
        <= {"message", "type", "param", "code", "request_id"}
    )
    assert (
        error.get("request_id", response.headers["x-request-id"])
        == response.headers["x-request-id"]
    )
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


class Clock:
    """Time that moves only when a test moves it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class LocalLimits(KeyLimits):
    """The limits of one process (the real one shares a Ray actor between replicas)."""

    def __init__(self):
        super().__init__("test")
        self.window = SlidingWindow(Clock())  # time stands still: however slow the requests are

    async def _admit(self, key, reserve, hold_s, counted):
        return self.window.admit(
            key.name, key.requests_per_minute, key.tokens_per_minute, reserve, hold_s, counted
        )

    def settle(self, key, ticket, tokens):
        self.window.settle(key.name, ticket, tokens)
