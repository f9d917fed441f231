"""Where vLLM's CPU processes run inside a replica: the choice, and the pinning on a real process tree
(processes titled as vLLM titles its engine core and worker, without vLLM)."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from servers.vllm_cpu_placement import ENGINE_CORE_PINNING_ENV, bind_cpu_shards, engine_core_beside_worker, worker_core


@pytest.mark.parametrize("workers,replica,expected", [
    ([{0}], {0, 1}, 0),                    # 2 cores: vLLM binds its worker to core 0, leaves core 1
    ([{4, 5, 6}, {8, 9, 10}], set(range(12)), 4),
    ([{0, 1}], {0, 1}, None),               # VLLM_CPU_OMP_THREADS_BIND=nobind: nothing bound, nothing to share
    ([], {0, 1}, None),                     # no worker process
])
def test_the_engine_core_goes_to_its_first_workers_first_core(workers, replica, expected):
    assert worker_core(workers, replica) == expected


def test_shards_get_their_own_cores(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    bind_cpu_shards(2)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"


# An "engine core" that starts a "worker" bound to the replica's last core, as vLLM's are titled.
ENGINE_CORE = """
import os, subprocess, sys, time, setproctitle
setproctitle.setproctitle("VLLM::EngineCore")
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
time.sleep(60)
"""
WORKER = """
import os, time, setproctitle
setproctitle.setproctitle("VLLM::Worker")
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
time.sleep(60)
"""


@pytest.fixture
def engine_core():
    process = subprocess.Popen([sys.executable, "-c", ENGINE_CORE, WORKER])
    try:
        core = psutil.Process(process.pid)
        deadline = time.monotonic() + 30
        while not any(len(os.sched_getaffinity(w.pid)) == 1 for w in core.children()
                      if w.cmdline()[:1] == ["VLLM::Worker"]):
            assert time.monotonic() < deadline, "the stand-in worker did not start"
            time.sleep(0.1)
        yield core
    finally:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a worker bound to fewer cores than the replica needs 2 cores")
def test_the_engine_core_is_pinned_beside_its_worker(engine_core, monkeypatch):
    monkeypatch.delenv(ENGINE_CORE_PINNING_ENV, raising=False)
    last = max(os.sched_getaffinity(0))
    assert engine_core_beside_worker() == last
    assert {os.sched_getaffinity(t.id) == {last} for t in engine_core.threads()} == {True}


def test_the_operator_can_leave_the_engine_core_where_vllm_puts_it(engine_core, monkeypatch):
    monkeypatch.setenv(ENGINE_CORE_PINNING_ENV, "0")
    assert engine_core_beside_worker() is None
    assert os.sched_getaffinity(engine_core.pid) == os.sched_getaffinity(0)
