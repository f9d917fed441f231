"""Request models per capability. For LLM endpoints these are vLLM's own OpenAI protocol
models (field for field what vLLM's server accepts), so the router rejects a malformed
body with the same rules the engine applies, before any engine work. The audio models
follow OpenAI's API reference; the uploaded file travels beside them, not in them."""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.input_errors import InputError
from common.transcripts import TranscriptFormat
from configs.server_models import Capability

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
TimestampGranularity = Literal["word", "segment"]


class _AudioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | None = Field(
        default=None, max_length=4096, description="style or vocabulary hint"
    )
    response_format: TranscriptFormat = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)


def _segment_only() -> list[TimestampGranularity]:
    return ["segment"]


class TranslationRequest(_AudioRequest):
    """``POST /v1/audio/translations``: speech in any language to English text."""


class TranscriptionRequest(_AudioRequest):
    """``POST /v1/audio/transcriptions``."""

    language: str | None = Field(
        default=None, pattern=r"^[a-z]{2,3}$", description="ISO-639-1 code"
    )
    timestamp_granularities: list[TimestampGranularity] = Field(default_factory=_segment_only)


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str = Field(min_length=1)
    voice: str = Field(min_length=1)
    response_format: SpeechFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)


_AUDIO_REQUESTS = {
    Capability.TRANSCRIPTION: TranscriptionRequest,
    Capability.TRANSLATION: TranslationRequest,
    Capability.SPEECH: SpeechRequest,
}


# The endpoints whose bodies vLLM's own protocol models describe (``request_adapter``).
VLLM_PROTOCOL_CAPABILITIES = frozenset(
    {
        Capability.CHAT,
        Capability.COMPLETIONS,
        Capability.EMBEDDINGS,
        Capability.RERANK,
        Capability.SCORE,
        Capability.CLASSIFY,
        Capability.TOKENIZE,
        Capability.DETOKENIZE,
    }
)


class InvalidRequest(InputError):
    """A request body that does not fit its endpoint's model; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param=param)


@functools.cache
def request_adapter(capability: Capability) -> TypeAdapter:
    if capability is Capability.CHAT:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as model
    elif capability is Capability.COMPLETIONS:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as model
    elif capability is Capability.EMBEDDINGS:
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest as model  # a union
    elif capability is Capability.RERANK:
        from vllm.entrypoints.pooling.scoring.protocol import RerankRequest as model
    elif capability is Capability.SCORE:
        from vllm.entrypoints.pooling.scoring.protocol import ScoreRequest as model  # a union
    elif capability is Capability.CLASSIFY:
        from vllm.entrypoints.pooling.classify.protocol import (
            ClassificationRequest as model,
        )  # a union
    elif capability is Capability.TOKENIZE:
        from vllm.entrypoints.serve.tokenize.protocol import TokenizeRequest as model  # a union
    elif capability is Capability.DETOKENIZE:
        from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest as model
    elif capability in _AUDIO_REQUESTS:
        model = _AUDIO_REQUESTS[capability]
    else:
        raise KeyError(capability)
    return TypeAdapter(model)


def parse_request(capability: Capability, body: dict[str, Any]) -> Any:
    """Validate ``body`` for ``capability``; raise ``InvalidRequest`` naming the first bad field."""
    return validate_request(request_adapter(capability), body)


def validate_request(adapter: TypeAdapter, data: Any, prefix: tuple[str, ...] = ()) -> Any:
    """Validate ``data``; raise ``InvalidRequest`` naming the first bad field (under ``prefix``)."""
    try:
        return adapter.validate_python(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        # Drop union member names pydantic puts in the path (EmbeddingCompletionRequest, ...).
        param = ".".join(str(p) for p in prefix + first["loc"] if not _is_union_tag(p)) or None
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{param}: {message}" if param else message, param) from None
    except RecursionError:
        raise InvalidRequest("the request nests too deeply") from None
    except Exception as err:
        # vLLM's validators raise their own errors (VLLMValidationError: ``parameter``), which
        # pydantic passes through unwrapped; anything a validator raises is about the body.
        param = getattr(err, "parameter", None)
        raise InvalidRequest(
            str(err.args[0]) if err.args else type(err).__name__,
            ".".join(prefix + (param,)) if param else None,
        ) from None


def _is_union_tag(part: Any) -> bool:
    text = str(part)
    return text[:1].isupper() or "[" in text
