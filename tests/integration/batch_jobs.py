"""The batch jobs of ``test_batch.py``: ``deploy_app.py batch`` runs on the session platform's Ray
with ``--address auto``, as a user runs them beside a serving platform. The session starts them
all side by side as soon as its platform is up (``background.py``), while the other integration
tests run; ``test_batch.py`` checks what each wrote."""

from __future__ import annotations

import contextlib
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
import yaml

from tests.audio_files import audio_file
from tests.integration.helpers import ROOT
from tests.media_files import image_file

SUMMARY = "batch: "


def run_batch(env: dict[str, str], *args: str) -> str:
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


def records_in(path) -> dict[str, dict]:
    return parsed_records(Path(path).read_text())


def parsed_records(lines: str) -> dict[str, dict]:
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
    first = run_batch(env, *files, "--parameters", '{"max_tokens": 6}')
    answered = answers.read_text()
    prompts.write_text(
        prompts.read_text() + json.dumps({"id": "new", "prompt": "One more."}) + "\n"
    )
    return first, answered, run_batch(env, *files)


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


AUDIO_TAKES_S = (1.0, 2.0, 3.0)  # the recordings' lengths, for the usage ledger's audio seconds
BATCH_USAGE_KEY = "nightly-transcripts"


def _audio_job(work: Path) -> list[str]:
    """The default config with a usage database: the job's rows go to its ledger too."""
    (work / "recordings").mkdir()
    for i, seconds in enumerate(AUDIO_TAKES_S):
        (work / "recordings" / f"take{i}.wav").write_bytes(
            audio_file("wav", "pcm_s16le", seconds=seconds)
        )
    (work / "recordings" / "notes.wav").write_bytes(b"%PDF-1.4 not audio")
    config = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    platform = next(app for app in config["applications"] if "models" in app.get("args", {}))
    platform["args"]["usage"] = {"database": f"sqlite:///{(work / 'usage.db').resolve()}"}
    (work / "with_usage.yaml").write_text(yaml.safe_dump(config))
    return [
        "--config",
        str(work / "with_usage.yaml"),
        "--usage-key",
        BATCH_USAGE_KEY,
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
    return lambda env, work: run_batch(env, *inputs(work))


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


@contextlib.contextmanager
def batch_jobs_running(env: dict[str, str], workdir: Path) -> Iterator[dict[str, Job]]:
    """Every job, all started side by side on the Ray that ``env`` reaches, as several users'
    jobs share one cluster; each one's files in ``workdir/<name>``."""
    with ThreadPoolExecutor(len(JOBS)) as pool:
        started = {}
        for name, runs in JOBS.items():
            work = workdir / name
            work.mkdir(parents=True)
            started[name] = Job(work, pool.submit(runs, env, work))
        yield started
