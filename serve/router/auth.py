"""Bearer API keys: one check for the router and for the replicas that answer HTTP themselves."""

from __future__ import annotations

import hmac

from configs.api_keys import APIKey
from serve.router.errors import APIError


def check_api_key(authorization: str | None, api_keys: tuple[APIKey, ...]) -> APIKey | None:
    """The key ``authorization`` presents (``Bearer <key>``), or a 401; None when the platform
    has no keys (open)."""
    if not api_keys:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, and a header may carry any byte.
    presented = token.strip().encode("utf-8", "surrogateescape")
    matched = None
    for key in api_keys:  # every key compared, so the time taken does not tell which one matched
        if hmac.compare_digest(presented, key.secret.encode()):
            matched = key
    if scheme.lower() != "bearer" or matched is None:
        raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return matched


def request_key(request) -> APIKey | None:
    """The key the request's auth check accepted (None: the platform has no keys)."""
    return getattr(request.state, "api_key", None)


def check_scope(key: APIKey | None, model_id: str) -> None:
    """A 403 when ``key`` may not use ``model_id``."""
    if key is not None and not key.allows(model_id):
        raise APIError(403, f"this API key ({key.name}) may not use model {model_id!r}",
                       param="model", code="model_not_allowed")
