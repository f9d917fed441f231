"""Engines that batch concurrent requests into one model call with Ray Serve's ``serve.batch``.

A ``TaskRunner`` holds one model and knows its task: ``prepare`` checks one request and
decodes its inputs into jobs (so a bad input fails alone, before any batching),
``run`` serves a batch of jobs that share options in one model call, ``respond`` encodes a
request's results. ``BatchedEngine`` does the rest for every such engine (audio, vision,
video): Serve batching from the YAML's ``max_batch_size`` and ``batch_wait_timeout_s``,
one model thread (the replica's event loop keeps answering health checks and filling the
next batch while a batch runs), counters, and errors as 4xx/5xx responses.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from cloud.storage import resolve_model_source
from common.devices import torch_device, torch_dtype
from common.engine_response import EngineResponse
from common.input_errors import InputError
from common.media_usage import MediaUsage
from common.metrics import platform_metrics
from common.serve_options import MERGED_BATCHES
from configs.server_models import Capability
from servers.base_engine import BaseEngine

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One checked input, ready for the model; jobs with equal ``group_key`` share a call."""

    request: Any
    payload: Any
    group_key: Any = None  # hashable; each runner groups by its own kind of key
    extra: dict[str, Any] = field(default_factory=dict)  # what the runner keeps beside the input


class TaskRunner(abc.ABC):
    def __init__(self, kwargs: Any):
        self.kwargs = kwargs
        self.forward_passes = 0  # model calls, each over a whole batch

    @abc.abstractmethod
    def load(self, source: str, device: str, dtype: Any) -> None:
        """Load the model (runs on the engine's model thread)."""

    @abc.abstractmethod
    def capabilities(self) -> list[Capability]: ...

    @abc.abstractmethod
    def prepare(self, capability: Capability, body: dict[str, Any]) -> list[Job]:
        """Validate one request and decode its inputs; raise ``InputError`` when unusable."""

    @abc.abstractmethod
    def run(self, jobs: list[Job]) -> list[Any]:
        """Serve jobs that share a ``group_key`` in one model call; one result per job, in order."""

    @abc.abstractmethod
    def respond(self, jobs: list[Job], results: list[Any]) -> EngineResponse:
        """Encode one request's results."""

    def measured(self, jobs: list[Job], results: list[Any]) -> MediaUsage:
        """What one request's media measured, for the usage ledger (audio seconds, images,
        video seconds); by default nothing."""
        return MediaUsage()

    def _counted(self, forward):
        """Wrap a model call so ``forward_passes`` counts it."""

        def counted(*args, **kwargs):
            self.forward_passes += 1
            return forward(*args, **kwargs)

        return counted


class BatchedEngine(BaseEngine):
    """An engine whose ``engine_kwargs`` have ``dtype``, ``max_batch_size``,
    ``batch_wait_timeout_s``."""

    def __init__(self, entry):
        super().__init__(entry)
        self.kwargs = entry.engine_kwargs
        self.runner = self.create_runner()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._model_lock = asyncio.Lock()
        self._waiting: list[tuple[list[Job], asyncio.Future]] = []
        self.requests_in_flight = 0
        self.batches = 0
        self.batched_requests = 0
        self.largest_batch = 0

    @abc.abstractmethod
    def create_runner(self) -> TaskRunner: ...

    async def start(self) -> None:
        source = resolve_model_source(self.entry.model_loading_config.model_source)
        device = torch_device()
        dtype = torch_dtype(self.kwargs.dtype, device)
        await asyncio.get_running_loop().run_in_executor(
            self._model_thread, self.runner.load, source, device, dtype
        )
        self._run_batch.set_max_batch_size(self.kwargs.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.kwargs.batch_wait_timeout_s)
        logger.info(
            "%s for %s ready on %s (%s)",
            type(self.runner).__name__,
            self.entry.model_id,
            device,
            dtype,
        )

    async def handle(self, capability: Capability, body: dict[str, Any]) -> EngineResponse:
        jobs = await self._prepare(capability, body)
        if isinstance(jobs, EngineResponse):
            return jobs
        self.requests_in_flight += 1
        try:
            results = await asyncio.gather(*(self._run_batch(job) for job in jobs))
        except Exception as exc:
            return self._failed(exc)
        finally:
            self.requests_in_flight -= 1
        return await self._respond(jobs, results)

    async def handle_many(
        self, capability: Capability, bodies: list[dict[str, Any]]
    ) -> list[EngineResponse]:
        """Many requests at once, outside Serve (batch jobs): all their jobs go through the model in
        chunks of ``max_batch_size``, grouped by options; a bad request fails alone."""
        prepared = await asyncio.gather(*(self._prepare(capability, body) for body in bodies))
        jobs = [job for p in prepared if not isinstance(p, EngineResponse) for job in p]
        size = self.kwargs.max_batch_size
        results: list[Any] = []
        for start in range(0, len(jobs), size):
            results += await self._run_groups(jobs[start : start + size])
        answers, remaining = [], iter(results)
        for p in prepared:
            answers.append(
                p
                if isinstance(p, EngineResponse)
                else await self._respond(p, [next(remaining) for _ in p])
            )
        return answers

    async def _prepare(
        self, capability: Capability, body: dict[str, Any]
    ) -> list[Job] | EngineResponse:
        if capability not in self.runner.capabilities():
            return EngineResponse.error(
                400,
                f"model {self.entry.model_id!r} cannot serve {capability.value}",
                param="model",
                code="unsupported_endpoint",
            )
        try:
            return await asyncio.to_thread(self.runner.prepare, capability, body)
        except InputError as err:
            return EngineResponse.error(
                err.status_code, err.message, param=err.param, code=err.code
            )

    async def _respond(self, jobs: list[Job], results: list[Any]) -> EngineResponse:
        try:
            for result in results:
                if isinstance(result, Exception):
                    raise result
            answer = await asyncio.to_thread(self.runner.respond, jobs, results)
        except InputError as err:
            return EngineResponse.error(
                err.status_code, err.message, param=err.param, code=err.code
            )
        except Exception as exc:
            return self._failed(exc)
        if answer.status_code == 200:
            answer.headers = {
                **(answer.headers or {}),
                **self.runner.measured(jobs, results).headers(),
            }
        return answer

    def _failed(self, exc: Exception) -> EngineResponse:
        """The model failed: this request fails, the replica serves on."""
        logger.error("%s request failed", self.entry.model_id, exc_info=exc)
        return EngineResponse.error(
            500, f"the model failed: {type(exc).__name__}: {exc}", err_type="InternalServerError"
        )

    # Sizes are replaced from the YAML in start(). Serve forms the next batch while one runs,
    # from what arrived in batch_wait_timeout_s; letting up to MERGED_BATCHES of them in here
    # at once lets the merge below run them as one model call instead of small ones in a row.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=MERGED_BATCHES)
    async def _run_batch(self, jobs: list[Job]) -> list[Any]:
        return await self._run_merged(jobs)

    async def _run_merged(self, jobs: list[Job]) -> list[Any]:
        """Run one Serve batch, merged (up to ``max_batch_size`` jobs) with those that Serve
        formed while the model was busy."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((jobs, done))
        async with self._model_lock:
            if not done.done():
                # Shielded: the run holds other batches' jobs too, which must get their results
                # even when this batch's task is cancelled (Serve shutting its queue down).
                await asyncio.shield(self._run_waiting())
        return await done

    async def _run_waiting(self) -> None:
        merged: list[tuple[list[Job], asyncio.Future]] = []
        while self._waiting and (
            not merged
            or sum(len(j) for j, _ in merged) + len(self._waiting[0][0])
            <= self.kwargs.max_batch_size
        ):
            merged.append(self._waiting.pop(0))
        jobs = [job for batch, _ in merged for job in batch]
        self.batches += 1
        self.batched_requests += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        platform_metrics().batch_size.observe(len(jobs), {"model": self.entry.model_id})
        results = await self._run_groups(jobs)
        for batch, done in merged:
            if not done.done():  # a cancelled waiter takes no result
                done.set_result(results[: len(batch)])
            results = results[len(batch) :]

    async def _run_groups(self, jobs: list[Job]) -> list[Any]:
        """One model call per group of jobs with the same options; a failing group fails alone."""
        groups: dict[Any, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            groups[job.group_key].append(index)
        results: list[Any] = [None] * len(jobs)
        loop = asyncio.get_running_loop()
        for indexes in groups.values():
            group = [jobs[i] for i in indexes]
            try:
                outputs = await loop.run_in_executor(self._model_thread, self.runner.run, group)
            except Exception as exc:
                outputs = [exc] * len(group)
            for i, output in zip(indexes, outputs, strict=True):
                results[i] = output
        return results

    def stats(self) -> dict[str, Any]:
        return {
            "requests_in_flight": self.requests_in_flight,
            "batches": self.batches,
            "batched_requests": self.batched_requests,
            "largest_batch": self.largest_batch,
            "forward_passes": self.runner.forward_passes,
        }

    async def shutdown(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)
