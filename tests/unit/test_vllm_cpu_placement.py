"""Where vLLM's CPU processes run inside a replica: the choice, and the pinning on a real process
tree (processes titled as vLLM titles its engine core and worker, without vLLM)."""

import os
import subprocess
import time
from types import SimpleNamespace

import psutil
import pytest

from servers.vllm_cpu_placement import (
    ENGINE_CORE_PINNING_ENV,
    bind_cpu_shards,
    engine_core_beside_worker,
    worker_core,
    worker_inside_engine_core,
)


@pytest.mark.parametrize(
    "workers,replica,expected",
    [
        ([{0}], {0, 1}, 0),  # 2 cores: vLLM binds its worker to core 0, leaves core 1
        ([{4, 5, 6}, {8, 9, 10}], set(range(12)), 4),
        (
            [{0, 1}],
            {0, 1},
            None,
        ),  # VLLM_CPU_OMP_THREADS_BIND=nobind: nothing bound, nothing to share
        ([], {0, 1}, None),  # no worker process
    ],
)
def test_the_engine_core_goes_to_its_first_workers_first_core(workers, replica, expected):
    assert worker_core(workers, replica) == expected


def test_shards_get_their_own_cores(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    bind_cpu_shards(2)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"


def _parallel_config(world_size: int) -> SimpleNamespace:
    """What vLLM's OpenMP binding reads of its config, for ``world_size`` shards on this node."""
    parallel = SimpleNamespace(
        world_size=world_size,
        local_world_size=world_size,
        data_parallel_rank_local=None,
        _api_process_count=1,
        distributed_executor_backend="mp",
    )
    return SimpleNamespace(parallel_config=parallel, kv_transfer_config=None)


def test_a_single_shard_runs_in_the_engine_core_with_its_workers_binding(monkeypatch):
    monkeypatch.delenv(ENGINE_CORE_PINNING_ENV, raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1")
    monkeypatch.delenv("OMP_PLACES", raising=False)
    config = _parallel_config(1)
    with worker_inside_engine_core(config):
        # what the engine core process inherits as it starts, and binds to before it runs a step
        assert (os.environ["OMP_NUM_THREADS"], os.environ["OMP_PLACES"]) == ("1", "{1}")
    assert config.parallel_config.distributed_executor_backend == "uni"
    assert "OMP_PLACES" not in os.environ  # the replica's own environment is left as it was


@pytest.mark.parametrize("world_size,pinning", [(2, "1"), (1, "0")])
def test_several_shards_or_an_operators_no_keep_vllms_worker_processes(
    monkeypatch, world_size, pinning
):
    monkeypatch.setenv(ENGINE_CORE_PINNING_ENV, pinning)
    monkeypatch.delenv("OMP_PLACES", raising=False)
    config = _parallel_config(world_size)
    with worker_inside_engine_core(config):
        assert "OMP_PLACES" not in os.environ
    assert config.parallel_config.distributed_executor_backend == "mp"


# An "engine core" with one "worker" child, each titled as vLLM titles them (its command line's
# first word): a ``sleep`` started under that name, so no interpreter starts (seconds on a busy
# machine, where the unit tests run beside the session platform's start).
ENGINE_CORE = "(exec -a VLLM::Worker sleep 60) & exec -a VLLM::EngineCore sleep 60"


@pytest.fixture
def engine_core():
    process = subprocess.Popen(["bash", "-c", ENGINE_CORE])
    try:
        core = psutil.Process(process.pid)
        deadline = time.monotonic() + 30
        while not (workers := _titled(core.children(), "VLLM::Worker")) or not _titled(
            [core], "VLLM::EngineCore"
        ):
            assert time.monotonic() < deadline, "the stand-in processes did not start"
            time.sleep(0.05)
        # bound to the replica's last core, as vLLM binds its worker
        os.sched_setaffinity(workers[0].pid, {max(os.sched_getaffinity(0))})
        yield core
    finally:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()


def _titled(processes: list[psutil.Process], title: str) -> list[psutil.Process]:
    return [p for p in processes if p.cmdline()[:1] == [title]]


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2,
    reason="a worker bound to fewer cores than the replica needs 2 cores",
)
def test_the_engine_core_is_pinned_beside_its_worker(engine_core, monkeypatch):
    monkeypatch.delenv(ENGINE_CORE_PINNING_ENV, raising=False)
    last = max(os.sched_getaffinity(0))
    assert engine_core_beside_worker() == last
    assert {os.sched_getaffinity(t.id) == {last} for t in engine_core.threads()} == {True}


def test_the_operator_can_leave_the_engine_core_where_vllm_puts_it(engine_core, monkeypatch):
    monkeypatch.setenv(ENGINE_CORE_PINNING_ENV, "0")
    assert engine_core_beside_worker() is None
    assert os.sched_getaffinity(engine_core.pid) == os.sched_getaffinity(0)
