"""Which cores vLLM's CPU build runs on inside a replica: each shard's, and its engine core's (which
follows the load)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import psutil

from common.serve_env import setting

logger = logging.getLogger(__name__)

ENGINE_CORE_TITLE = "VLLM::EngineCore"  # vLLM's process titles (setproctitle)
WORKER_TITLE = "VLLM::Worker"
ENGINE_CORE_PINNING_ENV = "PLATFORM_VLLM_CPU_ENGINE_CORE_BESIDE_WORKER"


def bind_cpu_shards(world_size: int) -> None:
    """Give each CPU shard its own cores of this replica; vLLM binds one NUMA node per shard otherwise,
    and refuses when the machine has fewer nodes than shards."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    cores = sorted(os.sched_getaffinity(0))
    per_shard = max(1, len(cores) // world_size)
    shards = [cores[(i * per_shard) % len(cores):][:per_shard] for i in range(world_size)]
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, shard)) for shard in shards)


PIN_AT_REQUESTS = 2  # unfinished requests from which the engine core runs beside its worker
FOLLOW_INTERVAL_S = 0.05  # how often the engine's load is read


class EngineCorePlacement:
    """Moves vLLM's engine core (its scheduler process) beside its first worker while the engine
    runs ``PIN_AT_REQUESTS`` requests or more, and back to the cores vLLM gave it below that.

    On the CPU vLLM schedules synchronously: the engine core and its workers take turns, and each
    spins (``sched_yield``) while it waits for the other. vLLM binds the workers to their cores and
    leaves the engine core the rest, which in a replica it shares with the HTTP front end, Ray and
    HAProxy: under load it waits there for a core while the worker spins on its own. On the
    worker's first core (the thread that spins between steps) each runs while the other waits: on
    2 cores that took the one-hop path from 1700-2100 to 3000-3150 tok/s at 16 streams
    (bench/README.md, run O). A lone stream is better off where vLLM put it: its handovers cost
    more on one core than the other core, idle then, charges (0.68x-1.21x of its tokens/s pinned,
    run Q), so the placement follows the load.
    """

    def __init__(self, engine_core: psutil.Process, core: int):
        self.engine_core, self.core = engine_core, core
        self.home = os.sched_getaffinity(engine_core.pid)  # the cores vLLM left it
        self.pinned = False

    @classmethod
    def find(cls) -> "EngineCorePlacement | None":
        """The placement of this process's vLLM engine core, or None where there is nothing to move
        (no worker bound to fewer cores than the replica) or the operator turned it off."""
        if setting(ENGINE_CORE_PINNING_ENV) != "1":
            return None
        try:
            for engine_core in _children_titled(psutil.Process(), ENGINE_CORE_TITLE):
                workers = sorted(_children_titled(engine_core, WORKER_TITLE), key=lambda p: p.pid)
                core = worker_core([os.sched_getaffinity(w.pid) for w in workers], os.sched_getaffinity(0))
                if core is not None:
                    logger.info("vLLM's engine core (pid %d) runs on core %d, beside its worker, while it runs "
                                "%d requests or more", engine_core.pid, core, PIN_AT_REQUESTS)
                    return cls(engine_core, core)
        except (OSError, psutil.Error) as exc:  # a process gone, or a sandbox that forbids affinity
            logger.warning("vLLM's engine core keeps its cores: %s", exc)
        return None

    def follow(self, unfinished_requests: int) -> None:
        """Beside the worker from ``PIN_AT_REQUESTS`` unfinished requests, at home below."""
        pin = unfinished_requests >= PIN_AT_REQUESTS
        if pin == self.pinned:
            return
        cores = {self.core} if pin else self.home
        try:
            for thread in self.engine_core.threads():  # threads it starts later inherit the creator's cores
                os.sched_setaffinity(thread.id, cores)
        except (OSError, psutil.Error) as exc:  # the engine core is gone: the engine's health check says so
            logger.debug("could not move vLLM's engine core: %s", exc)
        self.pinned = pin

    async def follow_forever(self, unfinished_requests: Callable[[], int]) -> None:
        while True:
            self.follow(unfinished_requests())
            await asyncio.sleep(FOLLOW_INTERVAL_S)


def worker_core(worker_cores: list[set[int]], replica_cores: set[int]) -> int | None:
    """The first core of the first worker, where vLLM bound it to fewer cores than the replica has
    (an unbound worker, ``VLLM_CPU_OMP_THREADS_BIND=nobind``, leaves the scheduler alone)."""
    if not worker_cores or worker_cores[0] >= replica_cores:
        return None
    return min(worker_cores[0])


def _children_titled(process: psutil.Process, title: str) -> list[psutil.Process]:
    found = []
    for child in process.children():
        try:
            if (child.cmdline() or [""])[0].startswith(title):
                found.append(child)
        except psutil.Error:  # gone since the listing
            continue
    return found
