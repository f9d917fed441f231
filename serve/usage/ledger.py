"""The usage ledger's writer: each answered request adds to counts held in memory, and a
background thread writes their sum to the database every ``FLUSH_S`` (a request never waits on
the database). A process that dies loses at most the counts of its last ``FLUSH_S``; a write
that fails is kept and retried on the next flush, never dropped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from common.media_usage import MEASURES, MediaUsage
from serve.usage.tables import UsageRow

logger = logging.getLogger("ray.serve")

FLUSH_S = 1.0
COUNTS = ("requests", "prompt_tokens", "completion_tokens", "latency_s", *MEASURES)


@dataclass(frozen=True)
class Answered:
    """One answered request, as the request policy saw it end."""

    key_name: str
    model: str
    endpoint: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    at: float = 0.0  # time.time() when it ended
    media: MediaUsage = MediaUsage()


RowKey = tuple[datetime, str, str, str, int]  # minute, key, model, endpoint, status


def minute_of(at: float) -> datetime:
    """The UTC minute (naive, as the table stores it) that ``at`` falls in."""
    return datetime.fromtimestamp(at, UTC).replace(second=0, microsecond=0, tzinfo=None)


class UsageLedger:
    """Counts not yet written, summed by row; ``flush`` adds them to the database's rows."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._pending: dict[RowKey, list[float]] = {}
        # written since the last read of the spending (``UsageDatabase.refresh``): still counted
        # here, or a budget would forget this process's tokens between a flush and that read
        self._written: dict[RowKey, list[float]] = {}
        self._lock = threading.Lock()

    def record(self, answered: Answered) -> None:
        row = (
            minute_of(answered.at),
            answered.key_name,
            answered.model,
            answered.endpoint,
            answered.status,
        )
        counts = (
            1,
            answered.prompt_tokens,
            answered.completion_tokens,
            answered.latency_s,
            *astuple(answered.media),  # in MEASURES' order
        )
        with self._lock:
            self._merge(row, counts)

    def pending_tokens(self, key_name: str, since: datetime) -> int:
        """Tokens of ``key_name`` counted here since ``since`` that the last read of the
        database did not see (not written yet, or written after it)."""
        with self._lock:
            return sum(
                int(c[1] + c[2])
                for counts in (self._pending, self._written)
                for row, c in counts.items()
                if row[1] == key_name and row[0] >= since
            )

    def forget_written(self) -> None:
        """Called just before the spending is read again: what was written is in that read."""
        with self._lock:
            self._written = {}

    def flush(self) -> int:
        """Write what is pending (rows summed into the existing ones); how many rows were
        written. On a failure the counts are kept for the next flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            with self.engine.begin() as connection:
                for row, counts in sorted(
                    pending.items()
                ):  # one order: no deadlock between writers
                    connection.execute(self._upsert(row, counts))
        except Exception:
            logger.exception("the usage ledger could not be written; retrying on the next flush")
            with self._lock:
                for row, counts in pending.items():
                    self._merge(row, counts)
            return 0
        with self._lock:
            for row, counts in pending.items():
                self._merge(row, counts, self._written)
        return len(pending)

    def _merge(
        self, row: RowKey, counts: Iterable[float], into: dict[RowKey, list[float]] | None = None
    ) -> None:
        summed = (self._pending if into is None else into).setdefault(row, [0] * len(COUNTS))
        for index, value in enumerate(counts):
            summed[index] += value

    def _upsert(self, row: RowKey, counts: list[float]):
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        minute, key_name, model, endpoint, status = row
        values = dict(zip(COUNTS, counts, strict=True))
        insert = dialect.insert(UsageRow).values(
            minute=minute,
            key_name=key_name,
            model=model,
            endpoint=endpoint,
            status=status,
            **values,
        )
        table = UsageRow.__table__.c
        return insert.on_conflict_do_update(
            index_elements=["minute", "key_name", "model", "endpoint", "status"],
            set_={name: table[name] + insert.excluded[name] for name in COUNTS},
        )


def spent_tokens(engine: Engine, since: datetime) -> dict[str, int]:
    """Each key's prompt + completion tokens written since ``since``."""
    total = func.sum(UsageRow.prompt_tokens + UsageRow.completion_tokens)
    query = select(UsageRow.key_name, total).where(UsageRow.minute >= since)
    with engine.connect() as connection:
        return {
            name: int(n or 0) for name, n in connection.execute(query.group_by(UsageRow.key_name))
        }
