"""Keys an admin makes through ``/admin/keys``: stored by their SHA-256 digest, the secret shown
once when the key is made. Every router and replica reads them back (``UsageDatabase``'s
refresh) and checks them beside the YAML's keys."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from configs.api_keys import APIKey, key_digest
from serve.usage.tables import StoredKey

SECRET_PREFIX = "sk-"
SETTINGS = (
    "models",
    "requests_per_minute",
    "tokens_per_minute",
    "monthly_token_budget",
    "daily_token_budget",
)


class NameTaken(ValueError):
    pass


def as_api_key(row: StoredKey) -> APIKey:
    return APIKey(
        secret="",
        name=row.name,
        models=tuple(m for m in row.models.split(",") if m),
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
        digest=row.digest,
        monthly_token_budget=row.monthly_token_budget,
        daily_token_budget=row.daily_token_budget,
    )


def described(row: StoredKey) -> dict[str, Any]:
    """A stored key as ``GET /admin/keys`` shows it: never its digest."""
    return {
        "id": row.id,
        "name": row.name,
        "models": [m for m in row.models.split(",") if m],
        "requests_per_minute": row.requests_per_minute,
        "tokens_per_minute": row.tokens_per_minute,
        "monthly_token_budget": row.monthly_token_budget,
        "daily_token_budget": row.daily_token_budget,
        "created_at": row.created_at.isoformat() + "Z",
    }


class KeyStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, name: str, settings: dict[str, Any]) -> tuple[StoredKey, str]:
        """A new key and its secret (returned here only); NameTaken when the name is in use."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = StoredKey(
            id="key_" + secrets.token_hex(8),
            name=name,
            digest=key_digest(secret.encode()),
            created_at=datetime.now(UTC).replace(tzinfo=None),
            **_columns({"models": [], **settings}),
        )
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(StoredKey).values(**_row_values(row)))
        except IntegrityError as err:
            raise NameTaken(name) from err
        return row, secret

    def all(self) -> list[StoredKey]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(StoredKey.__table__).order_by(StoredKey.created_at))
            return [StoredKey(**row._mapping) for row in rows]

    def update(self, key_id: str, settings: dict[str, Any]) -> StoredKey | None:
        """The key with ``settings`` changed; None when there is no such key."""
        with self.engine.begin() as connection:
            if settings:
                connection.execute(
                    update(StoredKey).where(StoredKey.id == key_id).values(**_columns(settings))
                )
            row = connection.execute(
                select(StoredKey.__table__).where(StoredKey.id == key_id)
            ).first()
        return StoredKey(**row._mapping) if row is not None else None

    def delete(self, key_id: str) -> bool:
        with self.engine.begin() as connection:
            return connection.execute(delete(StoredKey).where(StoredKey.id == key_id)).rowcount > 0


def _columns(settings: dict[str, Any]) -> dict[str, Any]:
    columns = {name: value for name, value in settings.items() if name in SETTINGS}
    if "models" in columns:
        columns["models"] = ",".join(columns["models"] or [])
    return columns


def _row_values(row: StoredKey) -> dict[str, Any]:
    return {column.name: getattr(row, column.name) for column in StoredKey.__table__.columns}
