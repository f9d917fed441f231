"""``deploy_app.py batch``: offline inference with Ray Data on the default config's engines (real
vLLM, real MiniLM, tiny Whisper and ViT), each run on the session platform's Ray with
``--address auto``, as a user runs it beside a serving platform (skipped under ``PLATFORM_URL``);
the jobs start side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.audio_files import audio_file
from tests.integration.helpers import ROOT, platform_env
from tests.media_files import image_file

SUMMARY = "batch: "


@pytest.fixture(scope="module")
def ray_env(platform) -> dict[str, str]:
    """The environment in which ``--address auto`` finds the session platform's Ray."""
    return platform.require_owned().env


def _batch(env: dict[str, str], *args: str) -> str:
    """Run the job on the session's Ray; its summary line."""
    done = subprocess.run(
        [
            sys.executable,
            "deploy_app.py",
            "batch",
            "--config",
            "model_config.yaml",
            "--address",
            "auto",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return next(line for line in done.stdout.splitlines() if line.startswith(SUMMARY))


def _records(path) -> dict[str, dict]:
    return _parsed(Path(path).read_text())


def _parsed(lines: str) -> dict[str, dict]:
    return {record["id"]: record for record in map(json.loads, lines.splitlines())}


def _chat_runs(env: dict[str, str], work: Path) -> tuple[str, str, str]:
    """A first run over prompts with a bad row, then a rerun after one prompt more: both
    summaries, and the answers the first run wrote."""
    rows = [
        {"id": "greeting", "prompt": "Hello!"},
        {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 3},
        {"prompt": "A third one."},
        {"id": "broken", "prompt": "x", "temperature": -5},
    ]  # vLLM refuses it: written with its error
    prompts, answers = work / "prompts.jsonl", work / "answers.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    files = ["--model", "tiny-chat", "--input", str(prompts), "--output", str(answers)]
    first = _batch(env, *files, "--parameters", '{"max_tokens": 6}')
    answered = answers.read_text()
    prompts.write_text(
        prompts.read_text() + json.dumps({"id": "new", "prompt": "One more."}) + "\n"
    )
    return first, answered, _batch(env, *files)


def _embeddings_job(work: Path) -> list[str]:
    texts = pa.table({"id": ["cat", "dog"], "input": ["a cat purrs", "a dog barks"]})
    pq.write_table(texts, work / "texts.parquet")
    return [
        "--model",
        "all-minilm-l6-v2",
        "--input",
        str(work / "texts.parquet"),
        "--output",
        str(work / "vectors.parquet"),
    ]


def _audio_job(work: Path) -> list[str]:
    (work / "recordings").mkdir()
    for i in range(3):
        (work / "recordings" / f"take{i}.wav").write_bytes(
            audio_file("wav", "pcm_s16le", seconds=1.0 + i)
        )
    (work / "recordings" / "notes.wav").write_bytes(b"%PDF-1.4 not audio")
    return [
        "--model",
        "tiny-whisper",
        "--input",
        str(work / "recordings"),
        "--output",
        str(work / "transcripts.jsonl"),
    ]


def _image_job(work: Path) -> list[str]:
    (work / "photos").mkdir()
    for i in range(4):
        (work / "photos" / f"p{i}.png").write_bytes(image_file("PNG", seed=i))
    return [
        "--model",
        "tiny-vit",
        "--input",
        str(work / "photos" / "*.png"),
        "--output",
        str(work / "labels.jsonl"),
        "--parameters",
        '{"top_k": 2}',
    ]


def _one_run(inputs: Callable[[Path], list[str]]) -> Callable[[dict[str, str], Path], str]:
    return lambda env, work: _batch(env, *inputs(work))


JOBS: dict[str, Callable[[dict[str, str], Path], Any]] = {
    "chat": _chat_runs,
    "embeddings": _one_run(_embeddings_job),
    "audio": _one_run(_audio_job),
    "images": _one_run(_image_job),
}


@dataclass
class Job:
    work: Path  # its input and output files
    run: Future  # what its runs return

    def result(self) -> Any:
        return self.run.result()


@pytest.fixture(scope="module")
def jobs(ray_env, tmp_path_factory) -> Iterator[dict[str, Job]]:
    """Every job, all started side by side on the session's Ray, as several users' jobs share one
    cluster (the tests wait for the slowest, not for the sum); each test waits for its own and
    checks it."""
    with ThreadPoolExecutor(len(JOBS)) as pool:
        started = {}
        for name, runs in JOBS.items():
            work = tmp_path_factory.mktemp(name)
            started[name] = Job(work, pool.submit(runs, ray_env, work))
        yield started


def test_chat_prompts_with_a_bad_row_then_a_rerun_that_skips_what_is_done(jobs):
    job = jobs["chat"]
    summary, answered, again = job.result()
    assert "4 rows" in summary and "3 answered, 1 with an error; 0 already" in summary
    records = _parsed(answered)
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
    assert set(_records(job.work / "answers.jsonl")) == set(records) | {"new"}


def test_embeddings_from_parquet_into_a_parquet_folder(jobs):
    job = jobs["embeddings"]
    assert "2 answered, 0 with an error" in job.result()
    vectors = pq.read_table(job.work / "vectors.parquet").to_pylist()
    table = {row["id"]: json.loads(row["response"]) for row in vectors}
    assert [len(table[k]["data"][0]["embedding"]) for k in ("cat", "dog")] == [384, 384]


def test_a_folder_of_audio_is_transcribed_and_a_folder_of_images_classified(jobs):
    audio = jobs["audio"]
    assert "3 answered, 1 with an error" in audio.result()
    transcripts = _records(audio.work / "transcripts.jsonl")
    recordings = audio.work / "recordings"
    assert all(
        isinstance(transcripts[str(recordings / f"take{i}.wav")]["response"]["text"], str)
        for i in range(3)
    )
    assert transcripts[str(recordings / "notes.wav")]["error"]["status"] == 400

    images = jobs["images"]
    assert "4 answered" in images.result()
    labels = _records(images.work / "labels.jsonl")
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
