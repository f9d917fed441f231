"""Every error the router answers: in the OpenAI shape ``{"error": {message, type, param, code}}``,
or on the Open Inference Protocol's ``/v2`` paths in its shape, ``{"error": "<message>"}``."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.input_errors import InputError
from common.request_ids import current_request_id

DONE_EVENT = "data: [DONE]\n\n"  # the last event of an OpenAI stream
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class APIError(Exception):
    """Raised anywhere in a request to answer with this status and OpenAI error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status_code, self.message, self.param, self.code = status_code, message, param, code
        self.headers = headers

    @classmethod
    def from_input(cls, err: InputError, param: str | None = None) -> APIError:
        """The answer to input an engine or fetcher refused (``common.input_errors``): its status,
        message and code, under the request field it came from."""
        return cls(err.status_code, err.message, param=param or err.param, code=err.code)

    def response(self, request: Request | None = None) -> JSONResponse:
        if request is not None and is_oip_path(request):
            return JSONResponse(
                _with_request_id({"error": self.message}),
                status_code=self.status_code,
                headers=self.headers,
            )
        return error_response(
            self.status_code, self.message, param=self.param, code=self.code, headers=self.headers
        )

    def event(self) -> str:
        """The error as a server-sent event, for a stream that already began (its status is
        sent)."""
        error = {
            "message": self.message,
            "type": _error_type(self.status_code),
            "param": self.param,
            "code": self.code,
        }
        return f"data: {json.dumps({'error': _with_request_id(error)})}\n\n"


def request_timeout(timeout_s: float) -> APIError:
    """The 504 of a request that ran past ``router.request_timeout_s`` (streams included)."""
    return APIError(
        504,
        f"the model did not finish within the request timeout ({timeout_s:g} s)",
        code="timeout",
    )


def is_oip_path(request: Request) -> bool:
    path = request.scope.get("path", "").removeprefix(request.scope.get("root_path", "") or "")
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    status_code: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": _with_request_id(
            {"message": message, "type": _error_type(status_code), "param": param, "code": code}
        )
    }
    return JSONResponse(body, status_code=status_code, headers=headers)


def _with_request_id(error: dict) -> dict:
    """The request's id, for the client to quote (it is in the ``X-Request-Id`` header too)."""
    request_id = current_request_id.get()
    return {**error, "request_id": request_id} if request_id else error


def _error_type(status_code: int) -> str:
    return _TYPES.get(
        status_code, "server_error" if status_code >= 500 else "invalid_request_error"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route framework errors (unknown path, wrong method, bad path params) through one shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(
            exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        ).response(request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path")) or None
        return APIError(
            400, f"{param}: {first['msg']}" if param else str(first["msg"]), param=param
        ).response(request)
