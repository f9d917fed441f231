"""The usage ledger on a real PostgreSQL (Debian's ``postgresql``, started here in a temp dir on a
free port): two writers, as two router replicas are, open the database at the same moment (the
migration runs once) and write at once; the ledger holds every count exactly, and a key made
through one is checked, with its budget, by the other."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from configs.api_keys import APIKey
from serve.policy.budgets import check_budget
from serve.router.errors import APIError
from serve.usage.database import UsageDatabase
from serve.usage.reports import UsageQuery, usage_rows
from tests.integration.helpers import ROOT
from tests.integration.postgres_server import ledger_url, running_postgres


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with running_postgres() as port:
        yield ledger_url("127.0.0.1", port)


# One router replica: opens the ledger (migrating it if it is new), records its answers while its
# background thread flushes them, and stops as a replica does (its last counts written); it
# prints the stored keys it checks.
WRITER = """
import sys, time
from serve.usage.database import UsageDatabase
from common.media_usage import MediaUsage
from serve.usage.ledger import Answered
db = UsageDatabase(sys.argv[1])
model, count = sys.argv[2], int(sys.argv[3])
media = MediaUsage(audio_in_s=0.5, audio_out_s=0.25, images=2, video_s=1.5)
for n in range(count):
    db.record(
        Answered("team-a", model, "/v1/chat/completions", 200, 3, n % 5, 0.01, time.time(), media)
    )
    time.sleep(0.001)
db.close()
print(",".join(key.name for key in db.snapshot.keys))
"""
PER_WRITER = 1000


def _writers(url: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, model, str(PER_WRITER)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for model in ("a", "b")
    ]


def test_two_writers_at_once_keep_every_count_and_share_keys_and_budgets(postgres_url):
    first = _writers(postgres_url)  # both migrate the new database at the same moment
    assert [writer.wait(timeout=120) for writer in first] == [0, 0]
    db = UsageDatabase(postgres_url)
    try:
        _, secret = db.keys.create("team-a", {"daily_token_budget": 3 * PER_WRITER})
        second = _writers(postgres_url)
        assert [w.communicate(timeout=120)[0].strip() for w in second] == ["team-a"] * 2
        rows = {r["model"]: r for r in usage_rows(db.engine, UsageQuery(group_by=("model",)))}
        for model in ("a", "b"):
            assert rows[model]["requests"] == 2 * PER_WRITER
            assert rows[model]["prompt_tokens"] == 2 * 3 * PER_WRITER
            assert rows[model]["completion_tokens"] == 2 * sum(n % 5 for n in range(PER_WRITER))
            media = (rows[model][m] for m in ("audio_in_s", "audio_out_s", "images", "video_s"))
            assert tuple(media) == (PER_WRITER, PER_WRITER / 2, 4 * PER_WRITER, 3 * PER_WRITER)
        db.refresh()  # what each process does every 2 s
        with pytest.raises(APIError) as refused:
            (key,) = db.snapshot.keys  # as the request policy finds it, its budget included
            assert key.digest == APIKey(secret, "team-a").digest
            check_budget(db, key)
        assert refused.value.code == "daily_token_budget_exceeded"
    finally:
        db.close()
