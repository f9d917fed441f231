"""Bearer API keys: one check for the router and for the replicas that answer HTTP themselves."""

from __future__ import annotations

import hmac

from serve.router.errors import APIError


def check_api_key(authorization: str | None, api_keys: tuple[str, ...]) -> None:
    """Raise a 401 unless ``authorization`` is ``Bearer <one of api_keys>`` (no keys: open)."""
    if not api_keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, and a header may carry any byte.
    presented = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(presented, k.encode()) for k in api_keys):
        raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
