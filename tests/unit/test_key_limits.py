"""Per-key request limits: the sliding window, and the router's 429 in the OpenAI shape."""

from fastapi.testclient import TestClient

from configs.api_keys import APIKey
from serve.router.app import create_router_app
from serve.router.key_limits import KeyLimits, SlidingWindow
from serve.router.routing import RouterSettings
from tests.unit.test_router_app import CHAT, ROUTES, FakeEngines, assert_openai_error


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_key_gets_its_requests_per_minute_and_then_waits_for_the_oldest_to_age_out():
    clock = Clock()
    window = SlidingWindow(clock)
    assert [window.admit("a", 3) for _ in range(3)] == [0, 0, 0]
    clock.now += 20
    assert window.admit("a", 3) == 40  # the first request leaves the window 40 s from now
    assert window.admit("b", 3) == 0  # keys are counted apart
    clock.now += 40
    assert window.admit("a", 3) == 0


class LocalLimits(KeyLimits):
    """The limits of one process (the real one shares a Ray actor between replicas)."""

    def __init__(self):
        super().__init__("test")
        self.window = SlidingWindow()

    async def _admit(self, key):
        return self.window.admit(key.name, key.requests_per_minute)


def test_over_its_limit_a_key_gets_429_with_retry_after_and_others_are_served():
    keys = (APIKey("limited", "batch", requests_per_minute=2), APIKey("free", "ops"))
    app = create_router_app(RouterSettings(ROUTES, api_keys=keys), FakeEngines(), LocalLimits())
    c = TestClient(app)
    limited, free = {"Authorization": "Bearer limited"}, {"Authorization": "Bearer free"}
    assert [c.post("/v1/chat/completions", json=CHAT, headers=limited).status_code for _ in range(2)] == [200, 200]
    refused = c.post("/v1/chat/completions", json=CHAT, headers=limited)
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 60 and refused.json()["error"]["type"] == "rate_limit_error"
    assert all(c.post("/v1/chat/completions", json=CHAT, headers=free).status_code == 200 for _ in range(5))
