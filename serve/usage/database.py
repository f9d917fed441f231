"""One process's view of the usage database: its engine (schema migrated by Alembic when first
opened), the ledger's writer, and what every request checks without touching the database, the
stored keys and each key's tokens this month and today, read again every ``REFRESH_S``."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from configs.api_keys import APIKey
from serve.usage.key_store import KeyStore, as_api_key
from serve.usage.ledger import FLUSH_S, Answered, UsageLedger, spent_tokens

logger = logging.getLogger("ray.serve")

REFRESH_S = 2.0  # stored keys and spent tokens: an admin's change applies within this (and 5 s)
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30  # several processes write one SQLite file: wait for the lock


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def open_engine(url: str) -> Engine:
    """An engine on ``url`` with the schema at its latest revision."""
    sqlite = url.startswith("sqlite")
    if sqlite and (path := url.partition(":///")[2]):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S} if sqlite else {},
        pool_pre_ping=True,
    )
    if sqlite:
        event.listen(engine, "connect", _sqlite_wal)
    migrate(engine)
    return engine


def _sqlite_wal(connection, _record) -> None:
    """Readers never wait on the writer, nor the writer on readers."""
    connection.execute("PRAGMA journal_mode=WAL")


_migrating = threading.Lock()  # Alembic's context is a process-wide global: one at a time


def migrate(engine: Engine) -> None:
    """Alembic's upgrade to the latest revision; several processes may start at once: one that
    lost the race to create a table finds it made on its retry."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _migrating:
        _upgrade(engine, config)


def _upgrade(engine: Engine, config: Config) -> None:
    for attempt in range(5):
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            return
        except SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


@dataclass
class Snapshot:
    """What requests check, as the last refresh read it."""

    keys: tuple[APIKey, ...] = ()  # with their budgets
    month_tokens: dict[str, int] = field(default_factory=dict)
    day_tokens: dict[str, int] = field(default_factory=dict)


class UsageDatabase:
    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        self.ledger = UsageLedger(self.engine)
        self.keys = KeyStore(self.engine)
        self.snapshot = Snapshot()
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def record(self, answered: Answered) -> None:
        self.ledger.record(answered)

    def refresh(self) -> None:
        """Read the stored keys and this month's and today's spending again."""
        now = datetime.now(UTC)
        self.ledger.forget_written()  # what it wrote is in what is read now
        rows = self.keys.all()
        month = spent_tokens(self.engine, month_start(now))
        day = spent_tokens(self.engine, day_start(now))
        self.snapshot = Snapshot(
            keys=tuple(as_api_key(row) for row in rows),
            month_tokens=month,
            day_tokens=day,
        )

    def spent(self, key_name: str) -> tuple[int, int]:
        """The tokens ``key_name`` spent this month and today (UTC): as last read, plus what this
        process has not written yet (what other processes wrote since the last read is seen at the
        next one, ``REFRESH_S`` later)."""
        now = datetime.now(UTC)
        month, day = month_start(now), day_start(now)
        return (
            self.snapshot.month_tokens.get(key_name, 0)
            + self.ledger.pending_tokens(key_name, month),
            self.snapshot.day_tokens.get(key_name, 0) + self.ledger.pending_tokens(key_name, day),
        )

    def close(self) -> None:
        self._stop.set()
        self.ledger.flush()

    def _run(self) -> None:
        refreshed = time.monotonic()
        while not self._stop.wait(FLUSH_S):
            self.ledger.flush()
            if time.monotonic() - refreshed >= REFRESH_S:
                refreshed = time.monotonic()
                try:
                    self.refresh()
                except SQLAlchemyError:
                    logger.exception("the usage database could not be read; keeping the last read")


_opened: dict[str, UsageDatabase] = {}
_opening = threading.Lock()


def usage_database(url: str) -> UsageDatabase:
    """This process's one ``UsageDatabase`` on ``url`` (a router and a replica in one process
    share it)."""
    with _opening:
        if url not in _opened:
            _opened[url] = UsageDatabase(url)
        return _opened[url]
