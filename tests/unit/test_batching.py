"""``BatchedEngine``'s merging of Serve batches: cancelled waiters cost no one else a result."""

import asyncio
import threading
import time
from types import SimpleNamespace

from servers.batching import BatchedEngine, Job, TaskRunner


class GatedRunner(TaskRunner):
    """Each model call waits for one ``gate`` release; results echo the payloads."""

    def __init__(self):
        super().__init__(None)
        self.gate = threading.Semaphore(0)
        self.calls: list[list[str]] = []

    def load(self, source, device, dtype): ...

    def capabilities(self):
        return []

    def prepare(self, capability, body):
        return []

    def run(self, jobs):
        self.calls.append([job.payload for job in jobs])
        assert self.gate.acquire(timeout=10)
        return [f"done {job.payload}" for job in jobs]

    def respond(self, jobs, results): ...


class GatedEngine(BatchedEngine):
    def create_runner(self):
        return GatedRunner()


def _engine() -> GatedEngine:
    return GatedEngine(
        SimpleNamespace(model_id="m", engine_kwargs=SimpleNamespace(max_batch_size=8))
    )


async def _until(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_a_cancelled_batch_leaves_the_batches_merged_with_it_their_results():
    async def scenario():
        engine = _engine()
        runner = engine.runner
        first = asyncio.create_task(engine._run_merged([Job(None, "a")]))
        await _until(
            lambda: len(runner.calls) == 1
        )  # "a" runs; "b" and "c" wait and are merged next
        b = asyncio.create_task(engine._run_merged([Job(None, "b")]))
        c = asyncio.create_task(engine._run_merged([Job(None, "c")]))
        await asyncio.sleep(0.05)
        runner.gate.release()
        assert await first == ["done a"]
        await _until(lambda: len(runner.calls) == 2)
        assert runner.calls[1] == ["b", "c"]
        # Whichever task drives the merged run is cancelled; the other still gets its result.
        b.cancel()
        runner.gate.release()
        assert await asyncio.wait_for(c, 10) == ["done c"]
        assert b.cancelled() or b.exception() is None
        runner.gate.release()
        assert await asyncio.wait_for(engine._run_merged([Job(None, "d")]), 10) == ["done d"]

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_break_the_run_that_answers_it():
    async def scenario():
        engine = _engine()
        loop = asyncio.get_running_loop()
        gone, waiting = loop.create_future(), loop.create_future()
        gone.cancel()
        engine._waiting = [([Job(None, "x")], gone), ([Job(None, "y")], waiting)]
        engine.runner.gate.release()
        await engine._run_waiting()
        assert waiting.result() == ["done y"]

    asyncio.run(scenario())
