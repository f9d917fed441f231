"""The one error type for input a request cannot be served with: a 4xx, never a crash."""

from __future__ import annotations


class InputError(ValueError):
    """Bad request input; ``status_code`` is 400, or 413 for size limits; ``param`` names the
    field."""

    def __init__(
        self,
        message: str,
        code: str | None = None,
        status_code: int = 400,
        param: str | None = None,
    ):
        super().__init__(message)
        self.message, self.code, self.status_code, self.param = message, code, status_code, param
