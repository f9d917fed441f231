"""``deploy_app.py batch``: offline inference with Ray Data on the default config's engines (real
vLLM, real MiniLM, tiny Whisper and ViT), each run on the session platform's Ray with
``--address auto``, as a user runs it beside a serving platform (skipped under ``PLATFORM_URL``).
The session starts the jobs side by side as soon as its platform is up, while the other tests run
(``batch_jobs.py``); these tests, which run late (marker ``batch_jobs``), check what each wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from serve.usage.database import open_engine
from serve.usage.reports import UsageQuery, usage_rows
from tests.integration.batch_jobs import (
    AUDIO_TAKES_S,
    BATCH_USAGE_KEY,
    Job,
    parsed_records,
    records_in,
)
from tests.integration.helpers import ROOT, platform_env

pytestmark = pytest.mark.batch_jobs


@pytest.fixture(scope="module")
def jobs(batch_jobs) -> dict[str, Job]:
    return batch_jobs


def test_chat_prompts_with_a_bad_row_then_a_rerun_that_skips_what_is_done(jobs):
    job = jobs["chat"]
    summary, answered, again = job.result()
    assert "4 rows" in summary and "3 answered, 1 with an error; 0 already" in summary
    records = parsed_records(answered)
    assert len(records) == 4 and records["broken"]["error"]["status"] == 400
    assert "temperature" in records["broken"]["error"]["message"]
    greeting = records["greeting"]["response"]
    assert greeting["object"] == "chat.completion" and greeting["usage"]["completion_tokens"] <= 6
    story = next(
        r["response"]
        for k, r in records.items()
        if k not in ("greeting", "broken") and r["response"]["usage"]["completion_tokens"] <= 3
    )
    assert story["choices"][0]["finish_reason"] in ("length", "stop")
    # the rerun answered the one prompt added, and kept what was done
    assert "1 rows" in again and "4 already" in again
    assert set(records_in(job.work / "answers.jsonl")) == set(records) | {"new"}


def test_embeddings_from_parquet_into_a_parquet_folder(jobs):
    job = jobs["embeddings"]
    assert "2 answered, 0 with an error" in job.result()
    vectors = pq.read_table(job.work / "vectors.parquet").to_pylist()
    table = {row["id"]: json.loads(row["response"]) for row in vectors}
    assert [len(table[k]["data"][0]["embedding"]) for k in ("cat", "dog")] == [384, 384]


def test_a_folder_of_audio_is_transcribed_and_a_folder_of_images_classified(jobs):
    audio = jobs["audio"]
    assert "3 answered, 1 with an error" in audio.result()
    transcripts = records_in(audio.work / "transcripts.jsonl")
    recordings = audio.work / "recordings"
    assert all(
        isinstance(transcripts[str(recordings / f"take{i}.wav")]["response"]["text"], str)
        for i in range(3)
    )
    assert transcripts[str(recordings / "notes.wav")]["error"]["status"] == 400
    # the config names a usage database: every row is in its ledger, under the job's key
    (row,) = usage_rows(
        open_engine(f"sqlite:///{audio.work / 'usage.db'}"), UsageQuery(key=BATCH_USAGE_KEY)
    )
    assert (row["model"], row["endpoint"]) == ("tiny-whisper", "batch")
    assert (row["requests"], row["errors"]) == (4, 1)
    assert row["audio_in_s"] == pytest.approx(sum(AUDIO_TAKES_S), abs=1e-6)

    images = jobs["images"]
    assert "4 answered" in images.result()
    labels = records_in(images.work / "labels.jsonl")
    assert all(record["response"]["outputs"][0]["shape"] == [1, 2] for record in labels.values())


def test_a_model_or_endpoint_it_cannot_serve_is_refused_before_ray_starts(tmp_path):
    refusals = {
        "no model 'nope'": ["--model", "nope"],
        "cannot serve chat": ["--model", "tiny-vit", "--endpoint", "chat"],
    }

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "deploy_app.py",
                "batch",
                "--input",
                "x.jsonl",
                "--output",
                str(tmp_path / "o.jsonl"),
                *args,
            ],
            cwd=ROOT,
            env=platform_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    # side by side: each spends its seconds importing, not waiting on the other
    with ThreadPoolExecutor(len(refusals)) as pool:
        done = dict(zip(refusals, pool.map(run, refusals.values()), strict=True))
    for words, result in done.items():
        assert result.returncode == 2 and words in result.stderr, result.stderr[-2000:]
