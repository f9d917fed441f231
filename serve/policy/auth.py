"""Bearer API keys: one check for the router and for the replicas that answer HTTP themselves."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from configs.api_keys import APIKey, key_digest
from serve.router.errors import APIError


class _HasModelId(Protocol):
    @property
    def model_id(self) -> str: ...


Named = TypeVar("Named", bound=_HasModelId)  # a table entry: a model's route, a pipeline


def check_api_key(
    authorization: str | None, api_keys: tuple[APIKey, ...], required: bool | None = None
) -> APIKey | None:
    """The key ``authorization`` presents (``Bearer <key>``), or a 401; None when the platform
    has no keys (open). ``required``: whether the platform has keys, when every key it has may be
    revoked right now (default: whether ``api_keys`` has any)."""
    if not (api_keys if required is None else required):
        return None
    scheme, _, token = (authorization or "").partition(" ")
    # Digested as bytes: a header may carry any byte.
    presented = key_digest(token.strip().encode("utf-8", "surrogateescape"))
    matched = None
    for key in api_keys:  # every key compared, so the time taken does not tell which one matched
        if hmac.compare_digest(presented, key.digest):
            matched = key
    if scheme.lower() != "bearer" or matched is None:
        raise APIError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return matched


def request_key(request) -> APIKey | None:
    """The key the request's auth check accepted (None: the platform has no keys)."""
    return getattr(request.state, "api_key", None)


def check_scope(
    key: APIKey | None, model_id: str, table: Mapping[str, Named] | None = None, named: Any = None
) -> None:
    """The 404 of a model that does not exist when ``key`` may not use ``model_id``: a 403 would
    tell a key which model ids exist beyond its scope. ``table``: the models the answer lists as
    available, as an unknown model's 404 does (those the key may use); ``named``: the model the
    404 names, when the request named another than ``model_id`` (default: ``model_id``)."""
    if key is not None and not key.allows(model_id):
        available = [n for n, e in (table or {}).items() if allows(key, e)]
        raise unknown_model(model_id if named is None else named, available)


def unknown_model(model: Any, available: list[str]) -> APIError:
    """The 404 of a model that does not exist, or that the request's key may not use."""
    listed = f"; available: {', '.join(sorted(available))}" if available else ""
    return APIError(
        404, f"model {model!r} does not exist{listed}", param="model", code="model_not_found"
    )


def allows(key: APIKey | None, entry: Named) -> bool:
    """Whether ``key`` may use ``entry``: a model, or a pipeline with every model its steps call
    (a key scoped to a pipeline alone would otherwise reach its models' work through it)."""
    if key is None:
        return True
    steps = getattr(entry, "steps", ())
    return all(key.allows(name) for name in (entry.model_id, *(step.model for step in steps)))


def visible(request, table: Mapping[str, Named]) -> dict[str, Named]:
    """The entries the request's key may use (all of them when the platform has no scoped keys)."""
    key = request_key(request)
    return {name: entry for name, entry in table.items() if allows(key, entry)}


def admitted(request, table: Mapping[str, Named], name: Any) -> Named | None:
    """``table[name]`` when the request's key may use it, with the metrics' model label set on
    the request; None when there is no such entry or the key may not use it (the caller answers
    the same 404 for both)."""
    entry = table.get(name) if isinstance(name, str) else None
    if entry is None or not allows(request_key(request), entry):
        return None
    request.state.model_id = entry.model_id
    return entry
