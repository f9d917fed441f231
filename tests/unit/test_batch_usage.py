"""A batch job's answers in the usage ledger (real SQLite): what the engine actor hands the driver
for each answer, and the rows the driver's ledger writes under the job's key and endpoint."""

import json

from batch.usage import BatchLedger, spent
from common.engine_response import EngineResponse
from common.media_usage import MediaUsage
from serve.usage.reports import UsageQuery, usage_rows

USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def test_each_answer_is_recorded_under_the_jobs_key_with_its_tokens_and_media(tmp_path):
    chat = EngineResponse.json({"object": "chat.completion", "usage": USAGE})
    heard = EngineResponse(200, b'{"text": "hi"}', headers=MediaUsage(audio_in_s=2.5).headers())
    refused = EngineResponse.error(400, "not audio")
    spending = [spent(chat), spent(heard), spent(refused), spent(None)]
    assert json.loads(spending[3])["status"] == 400  # a row that was no request
    ledger = BatchLedger(f"sqlite:///{tmp_path}/usage.db", "nightly", "whisper")
    for one in spending:
        ledger.record(one, 0.5)
    ledger.close()  # the job's end: everything written
    (row,) = usage_rows(ledger.database.engine, UsageQuery(key="nightly"))
    assert (row["model"], row["endpoint"], row["requests"], row["errors"]) == (
        "whisper",
        "batch",
        4,
        2,
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["audio_in_s"]) == (9, 4, 2.5)
    assert row["latency_s"] == 2.0
