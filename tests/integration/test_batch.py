"""``deploy_app.py batch``: offline inference with Ray Data on the default config's engines (real
vLLM, real MiniLM, tiny Whisper and ViT), each run on the session platform's Ray with
``--address auto``, as a user runs it beside a serving platform (skipped under ``PLATFORM_URL``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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
    return {record["id"]: record for record in map(json.loads, open(path))}


def test_chat_prompts_with_a_bad_row_then_a_rerun_that_skips_what_is_done(ray_env, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "greeting", "prompt": "Hello!"},
        {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 3},
        {"prompt": "A third one."},
        {"id": "broken", "prompt": "x", "temperature": -5},
    ]  # vLLM refuses it: written with its error
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = tmp_path / "answers.jsonl"
    summary = _batch(
        ray_env,
        "--model",
        "tiny-chat",
        "--input",
        str(prompts),
        "--output",
        str(answers),
        "--parameters",
        '{"max_tokens": 6}',
    )
    assert "4 rows" in summary and "3 answered, 1 with an error; 0 already" in summary
    records = _records(answers)
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
    prompts.write_text(
        prompts.read_text() + json.dumps({"id": "new", "prompt": "One more."}) + "\n"
    )
    again = _batch(
        ray_env, "--model", "tiny-chat", "--input", str(prompts), "--output", str(answers)
    )
    assert "1 rows" in again and "4 already" in again
    assert set(_records(answers)) == set(records) | {"new"}


def test_embeddings_from_parquet_into_a_parquet_folder(ray_env, tmp_path):
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": ["cat", "dog"], "input": ["a cat purrs", "a dog barks"]}), texts)
    vectors = tmp_path / "vectors.parquet"
    summary = _batch(
        ray_env, "--model", "all-minilm-l6-v2", "--input", str(texts), "--output", str(vectors)
    )
    assert "2 answered, 0 with an error" in summary
    table = {row["id"]: json.loads(row["response"]) for row in pq.read_table(vectors).to_pylist()}
    assert [len(table[k]["data"][0]["embedding"]) for k in ("cat", "dog")] == [384, 384]


def test_a_folder_of_audio_is_transcribed_and_a_folder_of_images_classified(ray_env, tmp_path):
    audio = tmp_path / "recordings"
    audio.mkdir()
    for i in range(3):
        (audio / f"take{i}.wav").write_bytes(audio_file("wav", "pcm_s16le", seconds=1.0 + i))
    (audio / "notes.wav").write_bytes(b"%PDF-1.4 not audio")
    summary = _batch(
        ray_env,
        "--model",
        "tiny-whisper",
        "--input",
        str(audio),
        "--output",
        str(tmp_path / "transcripts.jsonl"),
    )
    assert "3 answered, 1 with an error" in summary
    transcripts = _records(tmp_path / "transcripts.jsonl")
    assert all(
        isinstance(transcripts[str(audio / f"take{i}.wav")]["response"]["text"], str)
        for i in range(3)
    )
    assert transcripts[str(audio / "notes.wav")]["error"]["status"] == 400

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"p{i}.png").write_bytes(image_file("PNG", seed=i))
    summary = _batch(
        ray_env,
        "--model",
        "tiny-vit",
        "--input",
        str(photos / "*.png"),
        "--output",
        str(tmp_path / "labels.jsonl"),
        "--parameters",
        '{"top_k": 2}',
    )
    assert "4 answered" in summary
    labels = _records(tmp_path / "labels.jsonl")
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
