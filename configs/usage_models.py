"""Where the usage ledger and the keys an admin makes are kept (``usage:`` in the platform's
args)."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from common.base_pydantic import StrictModel

DATABASE_SCHEMES = ("sqlite", "postgresql")
HOME_SQLITE = "sqlite:///~/"  # a file under the home of the user the platform runs as


class UsageConfig(StrictModel):
    """The usage database: off until ``database`` names one."""

    database: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the usage ledger and of the keys made through "
        "/admin/keys: sqlite:////var/lib/platform/usage.db (one machine; an absolute path, or "
        "sqlite:///~/dir/usage.db under the platform user's home: every replica opens it) or "
        "postgresql+psycopg://user@host/db (a cluster: every router and replica on every node "
        "writes to it); unset: no ledger, no /admin API",
    )

    @field_validator("database")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.partition(":")[0].partition("+")[0]
        if scheme not in DATABASE_SCHEMES:
            raise ValueError(
                f"{value.partition(':')[0]!r} is not a database the ledger supports: give a "
                "sqlite:////absolute/path.db or postgresql+psycopg://... URL"
            )
        if value.startswith(HOME_SQLITE):
            value = "sqlite:///" + os.path.expanduser(value.removeprefix("sqlite:///"))
        if scheme == "sqlite" and not value.startswith("sqlite:////"):
            raise ValueError(
                "a SQLite ledger needs an absolute path (sqlite:////dir/usage.db) or one under "
                "the home directory (sqlite:///~/dir/usage.db): each replica runs in its own "
                "working directory"
            )
        return value
