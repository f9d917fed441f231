"""Request models per capability. For LLM endpoints these are vLLM's own OpenAI protocol
models (field for field what vLLM's server accepts), so the router rejects a malformed
body with the same rules the engine applies, before any engine work."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import TypeAdapter, ValidationError

from configs.server_models import Capability


class InvalidRequest(ValueError):
    """A request body that does not fit its endpoint's model; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@functools.cache
def request_adapter(capability: Capability) -> TypeAdapter:
    if capability is Capability.CHAT:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as model
    elif capability is Capability.COMPLETIONS:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as model
    elif capability is Capability.EMBEDDINGS:
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest as model  # a union
    else:
        raise KeyError(capability)
    return TypeAdapter(model)


def parse_request(capability: Capability, body: dict[str, Any]) -> Any:
    """Validate ``body`` for ``capability``; raise ``InvalidRequest`` naming the first bad field."""
    try:
        return request_adapter(capability).validate_python(body)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        # Drop union member names pydantic puts in the path (EmbeddingCompletionRequest, ...).
        param = ".".join(str(p) for p in first["loc"] if not _is_union_tag(p)) or None
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{param}: {message}" if param else message, param) from None


def _is_union_tag(part: Any) -> bool:
    text = str(part)
    return text[:1].isupper() or "[" in text
