"""Audio engine: speech-to-text and text-to-speech with transformers, batched by Ray Serve.

Each request is checked and its audio decoded on its own (so a bad upload fails alone),
then joins a ``serve.batch`` with the requests that arrived within
``batch_wait_timeout_s``; one batch is one model call per group of requests that share
generation options. The model runs on one worker thread, so the replica's event loop
keeps answering health checks and queueing the next batch while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from cloud.storage import resolve_model_source
from common.audio_codec import AudioInputError
from common.devices import torch_device, torch_dtype
from configs.audio_models import MERGED_BATCHES, AudioModelEntry, AudioTask
from configs.open_api_models import InvalidRequest
from configs.server_models import Capability
from servers.audio.speech_to_text import SpeechToText
from servers.audio.task import AudioJob, AudioTaskRunner
from servers.audio.text_to_speech import TextToSpeech
from servers.base_engine import BaseEngine, EngineResponse

logger = logging.getLogger(__name__)

RUNNERS: dict[AudioTask, type[AudioTaskRunner]] = {
    AudioTask.SPEECH_TO_TEXT: SpeechToText,
    AudioTask.TEXT_TO_SPEECH: TextToSpeech,
}


class AudioEngine(BaseEngine):
    entry: AudioModelEntry

    def __init__(self, entry: AudioModelEntry):
        super().__init__(entry)
        self.kwargs = entry.engine_kwargs
        self.runner: AudioTaskRunner = RUNNERS[self.kwargs.task](self.kwargs)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audio-model")
        self._model_lock = asyncio.Lock()
        self._waiting: list[tuple[list[AudioJob], asyncio.Future]] = []
        self.requests_in_flight = 0
        self.batches = 0
        self.batched_requests = 0
        self.largest_batch = 0

    async def start(self) -> None:
        source = resolve_model_source(self.entry.model_loading_config.model_source)
        device = torch_device()
        dtype = torch_dtype(self.kwargs.dtype, device)
        await asyncio.get_running_loop().run_in_executor(self._model_thread, self.runner.load, source, device, dtype)
        self._run_batch.set_max_batch_size(self.kwargs.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.kwargs.batch_wait_timeout_s)
        logger.info("audio engine for %s ready: %s on %s (%s)", self.entry.model_id,
                    self.kwargs.task.value, device, dtype)

    async def handle(self, capability: Capability, body: dict[str, Any]) -> EngineResponse:
        if capability not in self.runner.capabilities():
            return EngineResponse.error(400, f"model {self.entry.model_id!r} cannot serve {capability.value}",
                                        param="model", code="unsupported_endpoint")
        self.requests_in_flight += 1
        try:
            job = await asyncio.to_thread(self.runner.prepare, capability, body)
            result = await self._run_batch(job)
            if isinstance(result, Exception):
                raise result
            return await asyncio.to_thread(self.runner.respond, job, result)
        except InvalidRequest as err:
            return EngineResponse.error(400, err.message, param=err.param)
        except AudioInputError as err:
            return EngineResponse.error(err.status_code, err.message, param="file", code=err.code)
        except Exception as exc:  # the model failed: this request fails, the replica serves on
            logger.exception("audio request failed")
            return EngineResponse.error(500, f"the audio model failed: {type(exc).__name__}: {exc}",
                                        err_type="InternalServerError")
        finally:
            self.requests_in_flight -= 1

    # Sizes are replaced from the YAML in start(). Serve forms the next batch while one runs,
    # from what arrived in batch_wait_timeout_s; letting up to MERGED_BATCHES of them in here
    # at once lets the merge below run them as one model call instead of small ones in a row.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=MERGED_BATCHES)
    async def _run_batch(self, jobs: list[AudioJob]) -> list[Any]:
        """Run one Serve batch, merged (up to ``max_batch_size`` requests) with those that
        Serve formed while the model was busy."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((jobs, done))
        async with self._model_lock:
            if not done.done():
                await self._run_waiting()
        return await done

    async def _run_waiting(self) -> None:
        merged: list[tuple[list[AudioJob], asyncio.Future]] = []
        while self._waiting and (not merged or sum(len(j) for j, _ in merged) + len(self._waiting[0][0])
                                 <= self.kwargs.max_batch_size):
            merged.append(self._waiting.pop(0))
        jobs = [job for batch, _ in merged for job in batch]
        self.batches += 1
        self.batched_requests += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        results = await self._run_groups(jobs)
        for batch, done in merged:
            done.set_result(results[:len(batch)])
            results = results[len(batch):]

    async def _run_groups(self, jobs: list[AudioJob]) -> list[Any]:
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
            for i, output in zip(indexes, outputs):
                results[i] = output
        return results

    def stats(self) -> dict[str, Any]:
        return {"requests_in_flight": self.requests_in_flight, "batches": self.batches,
                "batched_requests": self.batched_requests, "largest_batch": self.largest_batch,
                "forward_passes": self.runner.forward_passes}

    async def shutdown(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)
