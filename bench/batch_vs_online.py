"""Offline batch (``deploy_app.py batch``, Ray Data) against the online endpoint for the same rows.

One run, one after the other on the same machine: the same chat prompts (or embedding texts)
go (1) through the batch job, whose actor holds the model as a replica would, and (2) through
the platform's ``/v1`` endpoint, serving the same model with the same engine settings, at the
same concurrency as the job's batch size. Prints rows per second of each, the batch job's rate
while its actor answers (the job's model loading is a cost the online platform pays once), and
``ratio batch / online at concurrency <c>: <x.xx>x``.

    python bench/batch_vs_online.py [--model tiny-chat] [--rows 256] [--concurrency 32] \\
        [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from launch import ROOT, closed_loop, default_models, start_platform, stop, wait_ready

PORT = 8411


def rows(count: int, embeddings: bool) -> list[dict]:
    topics = ["the sea", "a cat", "Ray Serve", "the stars", "a story", "numbers"]
    if embeddings:
        return [
            {"id": str(i), "input": f"A sentence about {topics[i % len(topics)]} number {i}."}
            for i in range(count)
        ]
    return [
        {
            "id": str(i),
            "messages": [
                {"role": "user", "content": f"Tell me about {topics[i % len(topics)]} ({i})."}
            ],
        }
        for i in range(count)
    ]


def run_batch(model: str, source: Path, output: Path, batch_size: int) -> tuple[float, float]:
    """(rows/s of the whole job, model loading included; rows/s of its actor while answering)."""
    done = subprocess.run(
        [
            sys.executable,
            "deploy_app.py",
            "batch",
            "--model",
            model,
            "--input",
            str(source),
            "--output",
            str(output),
            "--batch-size",
            str(batch_size),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = next((out for out in done.stdout.splitlines() if out.startswith("batch: ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(done.stderr[-3000:])
    print(line)
    return (
        float(re.search(r"\(([\d.]+) rows/s", line).group(1)),
        float(re.search(r"([\d.]+) rows/s per actor while answering", line).group(1)),
    )


async def run_online(model: str, requests: list[dict], path: str, concurrency: int) -> float:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=600) as client:
        pending = iter(requests * 2)  # a warm-up round first, then every row once

        async def one() -> None:
            body = next(pending)
            response = await client.post(
                path, json={**{k: v for k, v in body.items() if k != "id"}, "model": model}
            )
            response.raise_for_status()

        return (await closed_loop(one, len(requests), concurrency))["per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny-chat", help="a model of model_config.yaml (chat or embeddings)"
    )
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="online requests in flight = batch job's batch size",
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    (entry,) = default_models(args.model)
    embeddings = (entry.get("engine_kwargs") or {}).get("runner") == "pooling"
    parameters = {} if embeddings else {"max_tokens": args.max_tokens, "ignore_eos": True}
    data = [{**row, **parameters} for row in rows(args.rows, embeddings)]  # the same body both ways
    with tempfile.TemporaryDirectory() as workdir:
        source = Path(workdir) / "rows.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in data))
        batch_whole, batch_loaded = run_batch(
            args.model, source, Path(workdir) / "out.jsonl", args.concurrency
        )
        proc = start_platform([entry], PORT, workdir)
        try:
            wait_ready(f"http://127.0.0.1:{PORT}/ready", proc, timeout_s=600)
            path = "/v1/embeddings" if embeddings else "/v1/chat/completions"
            online = asyncio.run(run_online(args.model, data, path, args.concurrency))
        finally:
            stop(proc)
    print(f"{args.model}, {args.rows} rows, concurrency {args.concurrency}:")
    print(
        f"  batch job: {batch_whole:.2f} rows/s with its start-up, "
        f"{batch_loaded:.2f} rows/s while its actor answers"
    )
    print(f"  online /v1: {online:.2f} rows/s (platform already up)")
    print(f"ratio batch / online at concurrency {args.concurrency}: {batch_loaded / online:.2f}x")


if __name__ == "__main__":
    main()
