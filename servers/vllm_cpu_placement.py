"""Which cores vLLM's CPU build runs on inside a replica: each shard's, and its engine core's."""

from __future__ import annotations

import contextlib
import logging
import os

import psutil

from common.serve_env import setting

logger = logging.getLogger(__name__)

ENGINE_CORE_TITLE = "VLLM::EngineCore"  # vLLM's process titles (setproctitle)
WORKER_TITLE = "VLLM::Worker"
ENGINE_CORE_PINNING_ENV = "PLATFORM_VLLM_CPU_ENGINE_CORE_BESIDE_WORKER"


def bind_cpu_shards(world_size: int) -> None:
    """Give each CPU shard its own cores of this replica; vLLM binds one NUMA node per shard
    otherwise, and refuses when the machine has fewer nodes than shards."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    cores = sorted(os.sched_getaffinity(0))
    per_shard = max(1, len(cores) // world_size)
    shards = [cores[(i * per_shard) % len(cores) :][:per_shard] for i in range(world_size)]
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
        ",".join(map(str, shard)) for shard in shards
    )


def worker_inside_engine_core(vllm_config) -> contextlib.AbstractContextManager:
    """Run a single CPU shard inside vLLM's engine core process (vLLM's ``uni`` executor, its
    default on a GPU) instead of a worker process of its own; the context to start the engine in.

    vLLM's CPU platform turns ``uni`` into ``mp`` because the worker's OpenMP binding must be in
    the environment before its process imports torch. The engine core is such a process, so the
    binding vLLM gives its worker (``OMP_NUM_THREADS``, ``OMP_PLACES``) is put in the environment
    while it starts: the scheduler then runs in the worker's thread on the worker's cores, and no
    step is handed over between two processes that spin while they wait for each other. On 2
    cores the one-hop path went from 0.95x-0.98x of Ray Serve LLM's direct streaming for a lone
    stream to 1.41x-1.46x, and to 1.14x-1.30x of bare ``vllm serve`` at 1 to 64 streams, with a
    third less memory for the engine (bench/README.md, run AG).
    """
    if setting(ENGINE_CORE_PINNING_ENV) != "1" or vllm_config.parallel_config.world_size > 1:
        return contextlib.nullcontext()
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    vllm_config.parallel_config.distributed_executor_backend = "uni"
    return OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0)


def engine_core_beside_worker() -> int | None:
    """Pin vLLM's engine core (its scheduler process) to the first core of its first worker, where
    it has worker processes (several shards); that core, or None where there is nothing to pin or
    the operator turned it off.

    On the CPU vLLM schedules synchronously: the engine core and its workers take turns, and each
    spins (``sched_yield``) while it waits for the other. vLLM binds the workers to their cores and
    leaves the engine core the rest, which in a replica it shares with the HTTP front end, Ray and
    HAProxy: there it waits for a core while the worker spins on its own. On the worker's first
    core (the thread that spins between steps) each runs while the other waits. On 2 cores this
    took the one-hop path from 1700-2100 to 3000-3150 tok/s at 16 streams (bench/README.md, run O).
    Unpinned, a lone stream's first token stalled now and then (TTFT p99 87-158 ms against 13-26
    pinned, run V): the client sat runnable for ~100 ms while vLLM's two spinning processes held
    both cores (run AB). A single shard does better still inside the engine core
    (``worker_inside_engine_core``).
    """
    if setting(ENGINE_CORE_PINNING_ENV) != "1":
        return None
    try:
        engine_cores = _children_titled(psutil.Process(), ENGINE_CORE_TITLE)
        for engine_core in engine_cores:
            workers = sorted(_children_titled(engine_core, WORKER_TITLE), key=lambda p: p.pid)
            core = worker_core(
                [os.sched_getaffinity(w.pid) for w in workers], os.sched_getaffinity(0)
            )
            if core is None:
                continue
            for (
                thread
            ) in engine_core.threads():  # threads it starts later inherit the creator's cores
                os.sched_setaffinity(thread.id, {core})
            logger.info(
                "vLLM's engine core (pid %d) runs on core %d, beside its worker",
                engine_core.pid,
                core,
            )
            return core
    except (OSError, psutil.Error) as exc:  # a process gone, or a sandbox that forbids affinity
        logger.warning("vLLM's engine core keeps its cores: %s", exc)
    return None


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
