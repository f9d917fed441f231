"""The admin API: keys made, changed and revoked live (``/admin/keys``), and the usage ledger
read back (``/admin/usage``, JSON or CSV). Only a key with ``admin: true`` may call it (403 for
another key; the policy answers 401 without one). A key made here is checked by every router
and replica at their next read of the database (``serve/usage/database.py``: within 2 s)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import Field

from common.base_pydantic import StrictModel
from configs.api_keys import NAME_PATTERN
from serve.policy.auth import request_key
from serve.router.errors import APIError
from serve.router.routing import RouterSettings
from serve.usage.database import UsageDatabase, usage_database
from serve.usage.key_store import NameTaken, described
from serve.usage.reports import DEFAULT_GROUPS, UsageQuery, as_csv, usage_rows


class KeySettings(StrictModel):
    """What ``PATCH /admin/keys/{id}`` may change (each field optional)."""

    models: list[str] | None = Field(default=None, description="model ids; empty: every model")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    monthly_token_budget: int | None = Field(default=None, ge=1)
    daily_token_budget: int | None = Field(default=None, ge=1)


class NewKey(KeySettings):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)


def _admin_database(request: Request) -> UsageDatabase:
    """The usage database, for an admin key only."""
    key = request_key(request)
    if key is None or not key.admin:
        raise APIError(
            403,
            "the admin API needs a key with admin: true in the platform's api_keys",
            code="admin_key_required",
        )
    url = request.app.state.usage_database
    if not url:
        raise APIError(
            404,
            "the admin API needs the usage database: set usage.database in the config",
            code="usage_database_not_configured",
        )
    return usage_database(url)


Admin = Annotated[UsageDatabase, Depends(_admin_database)]


def install_admin_routes(app: FastAPI, settings: RouterSettings) -> None:
    app.state.usage_database = settings.usage_database
    admin = APIRouter(prefix="/admin")

    @admin.post("/keys", status_code=201)
    async def create_key(new: NewKey, db: Admin) -> dict[str, Any]:
        if any(key.name == new.name for key in settings.api_keys):
            raise _name_taken(new.name)
        try:
            row, secret = await asyncio.to_thread(
                db.keys.create, new.name, new.model_dump(exclude={"name"}, exclude_none=True)
            )
        except NameTaken:
            raise _name_taken(new.name) from None
        return {"id": row.id, "name": row.name, "key": secret}

    @admin.get("/keys")
    async def list_keys(db: Admin) -> dict[str, Any]:
        await asyncio.to_thread(db.refresh)  # the spending as written now, not 2 s ago
        rows = await asyncio.to_thread(db.keys.all)
        return {"object": "list", "data": [_with_spending(db, described(row)) for row in rows]}

    @admin.patch("/keys/{key_id}")
    async def change_key(key_id: str, changes: KeySettings, db: Admin) -> dict[str, Any]:
        changed = changes.model_dump(exclude_unset=True)
        row = await asyncio.to_thread(db.keys.update, key_id, changed)
        if row is None:
            raise _no_such_key(key_id)
        return _with_spending(db, described(row))

    @admin.delete("/keys/{key_id}")
    async def revoke_key(key_id: str, db: Admin) -> dict[str, Any]:
        if not await asyncio.to_thread(db.keys.delete, key_id):
            raise _no_such_key(key_id)
        return {"id": key_id, "deleted": True}

    @admin.get("/usage", response_model=None)
    async def usage(
        db: Admin,
        key: str | None = None,
        model: str | None = None,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        group_by: str = ",".join(DEFAULT_GROUPS),
        format: str = "json",
    ) -> dict[str, Any] | PlainTextResponse:
        groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
        query = UsageQuery(key, model, _utc(since), _utc(until), groups)
        if format not in ("json", "csv"):
            raise APIError(400, "format: json or csv", param="format")
        try:
            query.check()
        except ValueError as err:
            raise APIError(400, str(err), param="group_by") from None
        rows = await asyncio.to_thread(usage_rows, db.engine, query)
        if format == "csv":
            return PlainTextResponse(as_csv(rows, groups), media_type="text/csv")
        return {"object": "list", "data": rows}

    app.include_router(admin)


def _with_spending(db: UsageDatabase, key: dict[str, Any]) -> dict[str, Any]:
    """A key with the tokens it spent this month and today (UTC), to see it near its budget."""
    month, day = db.spent(key["name"])
    return {**key, "month_tokens": month, "day_tokens": day}


def _utc(moment: datetime | None) -> datetime | None:
    """``moment`` as the ledger stores times: UTC, naive (one without a zone is read as UTC)."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _name_taken(name: str) -> APIError:
    return APIError(409, f"a key named {name!r} exists already", param="name", code="name_taken")


def _no_such_key(key_id: str) -> APIError:
    return APIError(404, f"no key with id {key_id!r}", code="key_not_found")
