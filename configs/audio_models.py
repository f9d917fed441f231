"""Config of ``type: audio`` models: speech-to-text (Whisper-style seq2seq, CTC such as
Wav2Vec2) and text-to-speech (VITS/MMS-TTS, or any transformers text-to-speech pipeline)."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from configs.server_models import (
    BATCH_WAIT_DESCRIPTION,
    Capability,
    TransformersEngineKwargs,
    TransformersModelEntry,
    batch_size_description,
)

OPENAI_MAX_UPLOAD_BYTES = 25 * 1024 * 1024


class AudioTask(StrEnum):
    SPEECH_TO_TEXT = "speech-to-text"
    TEXT_TO_SPEECH = "text-to-speech"


_TASK_ALIASES = {
    "automatic-speech-recognition": "speech-to-text",
    "asr": "speech-to-text",
    "stt": "speech-to-text",
    "tts": "text-to-speech",
    "text-to-audio": "text-to-speech",
}


class AudioEngineKwargs(TransformersEngineKwargs):
    task: AudioTask = Field(
        default=AudioTask.SPEECH_TO_TEXT,
        description="speech-to-text (also: automatic-speech-recognition, asr) "
        "or text-to-speech (tts)",
    )
    max_batch_size: int = Field(
        default=8, ge=1, le=256, description=batch_size_description("audio files or texts")
    )
    batch_wait_timeout_s: float = Field(
        default=0.05, ge=0, le=10, description=BATCH_WAIT_DESCRIPTION
    )

    # speech-to-text
    chunk_length_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="long audio is cut into windows of this length (Whisper: 30)",
    )
    stride_length_s: float | None = Field(
        default=None, ge=0, description="overlap between windows; default chunk/6"
    )
    language: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2,3}$",
        description="default ISO-639-1 language; unset: the model detects it",
    )
    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        le=448,
        description="the most tokens generated per window of audio (transformers' "
        "max_new_tokens; Whisper's limit is 448); unset: the model's generation config",
    )
    max_audio_bytes: int = Field(
        default=OPENAI_MAX_UPLOAD_BYTES,
        ge=1024,
        description="the largest audio file a request may upload, in bytes (OpenAI's 25 MiB by "
        "default); past it a 413. The router reads upload bodies up to it",
    )
    max_audio_duration_s: float = Field(
        default=3600.0,
        gt=0,
        description="the longest audio accepted, in seconds, checked while it is decoded (a "
        "small file can expand to hours)",
    )
    translation: bool | None = Field(
        default=None, description="serve /v1/audio/translations; unset: yes for Whisper models"
    )

    # text-to-speech
    max_input_chars: int = Field(
        default=4096,
        ge=1,
        description="the longest text one request may have spoken, in characters",
    )
    voices: dict[str, int] = Field(
        default_factory=dict,
        description="voice name -> speaker id of a multi-speaker model; "
        "empty: any voice name, the model's voice",
    )

    @field_validator("task", mode="before")
    @classmethod
    def _task_alias(cls, value: Any) -> Any:
        return _TASK_ALIASES.get(value, value) if isinstance(value, str) else value


class AudioModelEntry(TransformersModelEntry):
    engine_kwargs: AudioEngineKwargs = Field(
        default_factory=AudioEngineKwargs,
        description="the audio engine's settings: its task, batching and input limits",
    )

    def capabilities(self) -> list[Capability]:
        if self.engine_kwargs.task is AudioTask.TEXT_TO_SPEECH:
            return [Capability.SPEECH]
        translation = self.engine_kwargs.translation
        if translation is None:
            translation = _is_whisper(self.model_loading_config.model_source)
        return [Capability.TRANSCRIPTION] + ([Capability.TRANSLATION] if translation else [])

    def max_upload_bytes(self) -> int | None:
        if self.engine_kwargs.task is AudioTask.SPEECH_TO_TEXT:
            return self.engine_kwargs.max_audio_bytes
        return None


def _is_whisper(source: str) -> bool:
    """Whisper models translate; read a local config.json, else judge by the name."""
    config_path = os.path.join(os.path.expanduser(source), "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as handle:
            return json.load(handle).get("model_type") == "whisper"
    return "whisper" in source.lower()
