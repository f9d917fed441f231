"""What the audio engine asks of a task: load, check one request, run a batch, answer."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Hashable

from configs.audio_models import AudioEngineKwargs
from configs.server_models import Capability
from servers.base_engine import EngineResponse


@dataclass
class AudioJob:
    """One checked request, ready for the model; jobs with equal ``group_key`` share a call."""

    request: Any
    payload: Any  # decoded samples (speech-to-text) or text (text-to-speech)
    group_key: Hashable
    extra: dict[str, Any] | None = None


class AudioTaskRunner(abc.ABC):
    def __init__(self, kwargs: AudioEngineKwargs):
        self.kwargs = kwargs
        self.forward_passes = 0  # model calls, each over a whole batch

    @abc.abstractmethod
    def load(self, source: str, device: str, dtype: Any) -> None:
        """Load the model (runs on the engine's model thread)."""

    @abc.abstractmethod
    def capabilities(self) -> list[Capability]: ...

    @abc.abstractmethod
    def prepare(self, capability: Capability, body: dict[str, Any]) -> AudioJob:
        """Validate and decode one request; raise ``InvalidRequest`` or ``AudioInputError``."""

    @abc.abstractmethod
    def run(self, jobs: list[AudioJob]) -> list[Any]:
        """Run one batch of jobs that share a ``group_key``; one result per job, in order."""

    @abc.abstractmethod
    def respond(self, job: AudioJob, result: Any) -> EngineResponse:
        """Encode one job's result in the format its request asked for."""

    def _counted(self, forward):
        """Wrap a model call so ``forward_passes`` counts it."""
        def counted(*args, **kwargs):
            self.forward_passes += 1
            return forward(*args, **kwargs)

        return counted
