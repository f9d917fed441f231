"""Two vLLM models on shares of one GPU, and a third model beside them: memory per replica
and each model's tokens/s alone against all together, measured in one run.

Three platforms start one after the other from the same entries: model A alone, model B
alone, then A + B + the third model. Each vLLM model gets ``--share`` of a GPU
(``num_gpus``; the platform sets ``gpu_memory_utilization`` to 0.9 x the share). The load
is streamed chat completions with a fixed output length from the real ``openai`` client, A
and B driven at the same time in the shared run while the third model answers its own
requests. Prints output tokens/s of A and B alone and together (together/alone ratios) and
the GPU memory of every replica's process tree (``nvidia-smi``).

    python bench/gpu_sharing.py --model-a Qwen/Qwen2.5-1.5B-Instruct \\
        --model-b tiiuae/Falcon3-1B-Instruct \\
        --third openai/whisper-large-v3-turbo
    # a CPU machine: tiny models, a logical GPU
    python bench/gpu_sharing.py --logical-gpus 1 --cpus-per-model 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import subprocess
import sys
import tempfile
from typing import Any

import httpx
import openai
import psutil
from launch import ROOT, closed_loop, start_platform, stop, wait_ready

sys.path.insert(0, str(ROOT))
from tests.audio_files import audio_file  # noqa: E402  (the clips the tests upload)

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def vllm_entry(model_id: str, source: str, share: float, args) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_model_len": args.max_model_len, "max_num_seqs": args.concurrency}
    if args.logical_gpus:  # the CPU build: keep its KV cache small
        kwargs.update(dtype="float32", kv_cache_memory_bytes=256 << 20)
    return {
        "model_loading_config": {"model_id": model_id, "model_source": source, "type": "vllm"},
        "deployment_config": {
            "ray_actor_options": {"num_cpus": args.cpus_per_model, "num_gpus": share}
        },
        "engine_kwargs": kwargs,
    }


def third_entry(source: str, args) -> dict[str, Any]:
    """The model beside the two: speech-to-text, on its own small share."""
    share = 0 if args.logical_gpus else args.third_share
    return {
        "model_loading_config": {"model_id": "third", "model_source": source, "type": "audio"},
        "deployment_config": {
            "ray_actor_options": {"num_cpus": args.cpus_per_model, "num_gpus": share}
        },
        "engine_kwargs": {"task": "speech-to-text"},
    }


async def tokens_per_s(base: str, model: str, args) -> float:
    """Output tokens/s of ``args.requests`` streamed completions, ``args.concurrency`` at a time."""
    async with openai.AsyncOpenAI(
        base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600
    ) as client:
        return await _drive(client, model, args)


async def _drive(client: openai.AsyncOpenAI, model: str, args) -> float:
    counts: list[int] = []

    async def one() -> None:
        stream = await client.chat.completions.create(
            model=model,
            messages=PROMPT,
            max_tokens=args.max_tokens,
            temperature=1.0,
            extra_body={"ignore_eos": True},
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage:
                counts.append(chunk.usage.completion_tokens)

    timed = await closed_loop(one, args.requests, args.concurrency)
    # closed_loop runs a warm-up round first: count the tokens of the timed requests only.
    return sum(counts[-args.requests :]) * timed["per_s"] / args.requests


async def keep_third_busy(base: str, stop_event: asyncio.Event) -> int:
    """Transcribe a short clip in a loop until the LLM load ends; returns requests served."""
    clip = audio_file("wav", "pcm_s16le", seconds=5.0)
    served = 0
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        while not stop_event.is_set():
            response = await client.post(
                "/v1/audio/transcriptions",
                data={"model": "third"},
                files={"file": ("a.wav", clip, "audio/wav")},
            )
            served += response.status_code == 200
    return served


def gpu_memory_by_replica(root_pid: int) -> dict[str, float]:
    """GiB of GPU memory held by each replica's process tree, from nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    used = {int(row[0]): float(row[1]) / 1024 for row in csv.reader(io.StringIO(out)) if row}
    totals: dict[str, float] = {}
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            title = proc.cmdline()[0] if proc.cmdline() else proc.name()
        except psutil.Error:
            continue
        if "ServeReplica" not in title:
            continue
        tree = [proc, *proc.children(recursive=True)]
        totals[title.split(":")[-1]] = sum(used.get(p.pid, 0.0) for p in tree)
    return totals


async def shared_run(base: str, args) -> tuple[float, float, int]:
    stop_event = asyncio.Event()
    third = asyncio.create_task(keep_third_busy(base, stop_event))
    a, b = await asyncio.gather(
        tokens_per_s(base, "model-a", args), tokens_per_s(base, "model-b", args)
    )
    stop_event.set()
    return a, b, await third


def run_platform(models: list[dict], args, measure) -> tuple[Any, dict[str, float]]:
    extra = ("--num-gpus", str(args.logical_gpus)) if args.logical_gpus else ()
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_platform(models, args.port, workdir, extra)
        try:
            wait_ready(f"http://127.0.0.1:{args.port}/ready", proc, timeout_s=1200)
            result = asyncio.run(measure(f"http://127.0.0.1:{args.port}"))
            return result, gpu_memory_by_replica(proc.pid)
        finally:
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-a", default=str(ROOT / ".models" / "tiny-chat"))
    parser.add_argument("--model-b", default=str(ROOT / ".models" / "tiny-chat"))
    parser.add_argument("--third", default=str(ROOT / ".models" / "tiny-whisper"))
    parser.add_argument("--share", type=float, default=0.4)
    parser.add_argument("--third-share", type=float, default=0.1)
    parser.add_argument(
        "--logical-gpus", type=int, default=0, help="CPU machine: start Ray with this many GPUs"
    )
    parser.add_argument("--cpus-per-model", type=float, default=1)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()

    a = vllm_entry("model-a", args.model_a, args.share, args)
    b = vllm_entry("model-b", args.model_b, args.share, args)
    alone_a, memory_a = run_platform([a], args, lambda base: tokens_per_s(base, "model-a", args))
    alone_b, memory_b = run_platform([b], args, lambda base: tokens_per_s(base, "model-b", args))
    (with_a, with_b, third_served), memory = run_platform(
        [a, b, third_entry(args.third, args)], args, lambda base: shared_run(base, args)
    )

    print(
        f"share {args.share} each, concurrency {args.concurrency}, "
        f"{args.requests} x {args.max_tokens} tokens"
    )
    print(f"{'model':10} {'alone tok/s':>12} {'together tok/s':>15} {'together/alone':>15}")
    for name, alone, together in (("model-a", alone_a, with_a), ("model-b", alone_b, with_b)):
        print(f"{name:10} {alone:12.1f} {together:15.1f} {together / alone:14.2f}x")
    print(f"third model served {third_served} transcriptions meanwhile")
    for label, table in (("A alone", memory_a), ("B alone", memory_b), ("together", memory)):
        print(
            f"GPU memory, {label}: "
            + (", ".join(f"{k} {v:.2f} GiB" for k, v in table.items()) or "n/a (no nvidia-smi)")
        )


if __name__ == "__main__":
    main()
