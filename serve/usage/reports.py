"""``GET /admin/usage``: the ledger's rollups summed by the columns asked for, as JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, func, select

from common.media_usage import MEASURES
from serve.usage.tables import UsageRow

GROUPS = {"key": UsageRow.key_name, "model": UsageRow.model, "endpoint": UsageRow.endpoint}
PERIODS = ("minute", "hour", "day", "month")
DEFAULT_GROUPS = ("key", "model", "endpoint")
MEDIA = MEASURES  # revision 0002, after the rest
SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_s",
    *MEDIA,
)
SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_s", *MEDIA)
COUNTED = ("requests", "errors", "prompt_tokens", "completion_tokens", "images")  # integers
ROUNDED = tuple(name for name in SUMMED if name not in COUNTED)  # seconds, to the microsecond


@dataclass(frozen=True)
class UsageQuery:
    key: str | None = None
    model: str | None = None
    since: datetime | None = None  # UTC, naive
    until: datetime | None = None  # exclusive
    group_by: Sequence[str] = DEFAULT_GROUPS  # of GROUPS, and at most one of PERIODS

    def check(self) -> None:
        """A ValueError naming what ``group_by`` may hold when it holds anything else."""
        unknown = [g for g in self.group_by if g not in GROUPS and g not in PERIODS]
        if unknown or sum(g in PERIODS for g in self.group_by) > 1:
            raise ValueError(
                f"group_by {','.join(self.group_by)!r}: give a comma-separated list of "
                f"{', '.join(GROUPS)} and at most one of {', '.join(PERIODS)}"
            )


def usage_rows(engine: Engine, query: UsageQuery) -> list[dict[str, Any]]:
    query.check()
    groups = [g for g in query.group_by if g in GROUPS]
    period = next((g for g in query.group_by if g in PERIODS), None)
    columns: list[Any] = [GROUPS[g].label(g) for g in groups]
    if period is not None:
        columns.append(UsageRow.minute.label("minute"))
    sums = [
        func.sum(UsageRow.requests).label("requests"),
        func.sum(case((UsageRow.status >= 400, UsageRow.requests), else_=0)).label("errors"),
        func.sum(UsageRow.prompt_tokens).label("prompt_tokens"),
        func.sum(UsageRow.completion_tokens).label("completion_tokens"),
        func.sum(UsageRow.latency_s).label("latency_s"),
        *(func.sum(getattr(UsageRow, name)).label(name) for name in MEDIA),
    ]
    statement = select(*columns, *sums).group_by(*columns).order_by(*columns)
    for column, value in ((UsageRow.key_name, query.key), (UsageRow.model, query.model)):
        if value is not None:
            statement = statement.where(column == value)
    if query.since is not None:
        statement = statement.where(UsageRow.minute >= query.since)
    if query.until is not None:
        statement = statement.where(UsageRow.minute < query.until)
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(statement)]
    return _by_period(rows, groups, period) if period else [_totalled(row) for row in rows]


def _by_period(rows: list[dict[str, Any]], groups: list[str], period: str) -> list[dict[str, Any]]:
    """Minute rows folded into ``period`` buckets (done here: SQLite and PostgreSQL truncate
    dates differently)."""
    folded: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        start = _period_start(row.pop("minute"), period)
        bucket = folded.setdefault(
            (*(row[g] for g in groups), start),
            {
                **{g: row[g] for g in groups},
                period: start.isoformat() + "Z",
                **dict.fromkeys(SUMS, 0),
            },
        )
        for name in SUMMED:
            bucket[name] += row[name] or 0
    return [_totalled(row) for row in folded.values()]


def _period_start(minute: datetime, period: str) -> datetime:
    if period == "hour":
        return minute.replace(minute=0)
    if period == "day":
        return minute.replace(hour=0, minute=0)
    if period == "month":
        return minute.replace(day=1, hour=0, minute=0)
    return minute


def _totalled(row: dict[str, Any]) -> dict[str, Any]:
    for name in COUNTED:
        row[name] = int(row[name] or 0)
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    for name in ROUNDED:
        row[name] = round(float(row[name] or 0.0), 6)
    return row


def as_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*columns, *SUMS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
