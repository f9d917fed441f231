"""Read request bodies under a size limit: JSON objects, and OpenAI-style multipart uploads
(``file`` plus form fields); ``UploadMemory`` bounds the bytes all uploads hold at once."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from common.upload_sizes import UPLOAD_COPIES_HELD
from serve.router.errors import APIError

MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


class UploadMemory:
    """The bytes a router replica may hold for upload bodies and fetched media at once, across
    requests (``router.max_upload_memory_bytes``). A request reserves what it may read before
    reading it; past the total it gets a 503 with ``Retry-After`` at once. Each byte received is
    reserved ``UPLOAD_COPIES_HELD`` times: what it costs the replica's memory at the peak."""

    def __init__(self, total_bytes: int):
        self.total_bytes = total_bytes
        self.held_bytes = 0

    @contextlib.contextmanager
    def hold(self):
        """A reservation that grows with ``add`` and is returned when the request ends."""
        held = _Reservation(self)
        try:
            yield held
        finally:
            self.held_bytes -= held.nbytes

    def _take(self, nbytes: int) -> None:
        if self.held_bytes + nbytes > self.total_bytes:
            raise APIError(
                503,
                "the router holds as many uploads as its memory allows; retry shortly",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        self.held_bytes += nbytes


class _Reservation:
    def __init__(self, memory: UploadMemory):
        self.memory, self.nbytes = memory, 0

    def add(self, nbytes: int) -> None:
        """Reserve for ``nbytes`` received (held ``UPLOAD_COPIES_HELD`` times)."""
        self.memory._take(nbytes * UPLOAD_COPIES_HELD)
        self.nbytes += nbytes * UPLOAD_COPIES_HELD

    def add_body(self, request: Request, limit: int) -> int:
        """Reserve what the body may take: its declared length (when under ``limit``) or ``limit``;
        returns the limit to read it with."""
        declared = request.headers.get("content-length", "")
        limit = min(limit, int(declared)) if declared.isdigit() else limit
        self.add(limit)
        return limit


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; a 400 for anything else (deep nesting included), a 413 over
    ``limit``."""
    return parse_json_object(await read_limited_body(request, limit))


def parse_json_object(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return body


async def read_upload_form(request: Request, limit: int) -> dict[str, Any]:
    """The form's fields as a request body, with the file's bytes under ``file``.

    Repeated ``name[]`` fields (``timestamp_granularities[]``) become a list under ``name``.
    The body is counted while it streams in, so an oversized upload stops at ``limit``.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(
            400,
            "send the audio as multipart/form-data with a 'file' field",
            code="invalid_content_type",
        )
    parser = MultiPartParser(
        request.headers,
        _limited(request, limit),
        max_files=1,
        max_fields=MAX_FORM_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise APIError(
            400, f"malformed multipart form: {exc.message}", code="invalid_form"
        ) from None
    body: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise APIError(
                        400, f"unexpected file field {key!r}; upload the audio as 'file'", param=key
                    )
                body["file"], body["filename"] = await value.read(), value.filename
            elif key.endswith("[]"):
                body.setdefault(key[:-2], []).append(value)
            else:
                body[key] = value
    finally:
        await form.close()
    return body


async def read_limited_body(request: Request, limit: int) -> bytearray:
    """The whole body (not copied into ``bytes``: large bodies would be held twice), or a 413 as
    soon as it passes ``limit`` bytes."""
    body = bytearray()
    async for piece in _limited(request, limit):
        body += piece
    return body


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's pieces; a 413 up front when Content-Length says too much, else once the count
    does."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, f"request body is {declared} bytes; the limit is {limit}", code="request_too_large"
        )
    received = 0
    async for piece in request.stream():
        received += len(piece)
        if received > limit:
            raise APIError(
                413, f"request body exceeds the limit of {limit} bytes", code="request_too_large"
            )
        yield piece
