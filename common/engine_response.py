"""What an engine answers and the router forwards: one complete HTTP answer (status, body,
media type, headers). Streaming calls yield text chunks instead, or one of these first when
the request fails before any output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.request_ids import current_request_id


@dataclass
class EngineResponse:
    """A complete answer: HTTP status, body bytes, their media type and any headers the engine
    sets."""

    status_code: int
    content: bytes
    media_type: str = "application/json"
    headers: dict[str, str] | None = None

    @classmethod
    def json(cls, payload: Any, status_code: int = 200) -> EngineResponse:
        return cls(status_code, json.dumps(payload, separators=(",", ":")).encode())

    def error_message(self) -> str:
        """The message of an error answer: OpenAI's ``{"error": {"message"}}`` or
        ``{"error": "..."}``."""
        try:
            error = json.loads(self.content).get("error")
            return (error.get("message") if isinstance(error, dict) else error) or "failed"
        except (ValueError, AttributeError):
            return "failed"

    @classmethod
    def error(
        cls,
        status_code: int,
        message: str,
        err_type: str = "BadRequestError",
        param: str | None = None,
        code: str | int | None = None,
    ) -> EngineResponse:
        """An error in the OpenAI shape ``{"error": {message, type, param, code}}``."""
        body = {
            "message": message,
            "type": err_type,
            "param": param,
            "code": code if code is not None else status_code,
        }
        if (
            request_id := current_request_id.get()
        ):  # for the client to quote, as the router's own errors do
            body["request_id"] = request_id
        return cls.json({"error": body}, status_code)
