"""The controller's handle is looked up off the event loop: while the GCS cannot answer (a head
down), the replica's other requests go on, and a caller gets a TimeoutError, not a stall."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve.router import serve_controller


@pytest.fixture(autouse=True)
def fresh_lookup(monkeypatch):
    monkeypatch.setattr(serve_controller, "_handle", None)
    monkeypatch.setattr(serve_controller, "_lookup", None)


def test_a_blocked_lookup_times_out_without_stalling_the_loop_and_is_kept_once_it_answers(
    monkeypatch,
):
    gcs_back = threading.Event()
    calls = []

    def blocking_get_actor():  # as ray.get_actor while the GCS is unreachable
        calls.append(1)
        gcs_back.wait(30)
        return "controller-handle"

    monkeypatch.setattr(serve_controller, "_get_controller", blocking_get_actor)

    async def scenario():
        ticks = 0

        async def other_requests():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        others = asyncio.create_task(other_requests())
        with pytest.raises(TimeoutError):
            await serve_controller.serve_controller(timeout_s=0.3)
        served_meanwhile = ticks
        gcs_back.set()
        handle = await serve_controller.serve_controller(timeout_s=30)
        again = await serve_controller.serve_controller(timeout_s=0.01)
        others.cancel()
        return served_meanwhile, handle, again

    served_meanwhile, handle, again = asyncio.run(scenario())
    assert served_meanwhile > 0  # the loop kept running while the lookup was blocked
    assert handle == again == "controller-handle"
    assert calls == [1]  # the blocked lookup carried on and served the next call: one lookup
