"""Speech-to-text throughput with Ray Serve batching against the same engine unbatched.

One platform serves the same model twice, alike in all but the batch size:
``asr-batched`` (``max_batch_size`` 16 by default) and ``asr-unbatched`` (1). Each is
driven in turn by the real ``openai`` async client uploading the same WAV clip at the
same concurrency; the script prints transcriptions per second, latency p50/p99, requests
per forward pass (from the engine's counters) and the batched/unbatched ratio, all
measured in this one run.

    python bench/audio_batching.py [--concurrency 16] [--requests 96] [--clip-seconds 5]
                                   [--model-source .models/tiny-whisper]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import httpx
import openai
from launch import ROOT, closed_loop, start_platform, stop, wait_ready

sys.path.insert(0, str(ROOT))
from tests.audio_files import audio_file  # noqa: E402  (the same clips the tests upload)

PORT = 8300


def asr_model(model_id: str, source: str, batch_size: int, args) -> dict:
    return {
        "model_loading_config": {"model_id": model_id, "model_source": source, "type": "audio"},
        "deployment_config": {"ray_actor_options": {"num_cpus": args.cpus_per_replica}},
        "engine_kwargs": {
            "task": "speech-to-text",
            "max_batch_size": batch_size,
            "batch_wait_timeout_s": args.batch_wait_s,
        },
    }


def engine_counters(base: str, model: str) -> dict:
    return httpx.get(f"{base}/ready", timeout=30).json()["models"][model]


async def measure(base: str, model: str, clip: bytes, args) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)
    before = engine_counters(base, model)
    result = await closed_loop(
        lambda: client.audio.transcriptions.create(model=model, file=("clip.wav", clip)),
        args.requests,
        args.concurrency,
    )
    after = engine_counters(base, model)
    served = after["batched_requests"] - before["batched_requests"]
    result["requests_per_pass"] = served / max(
        1, after["forward_passes"] - before["forward_passes"]
    )
    result["requests_per_batch"] = served / max(1, after["batches"] - before["batches"])
    await client.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-source", default=str(ROOT / ".models" / "tiny-whisper"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-s", type=float, default=0.05)
    parser.add_argument("--cpus-per-replica", type=float, default=1)
    args = parser.parse_args()

    clip = audio_file("wav", "pcm_s16le", seconds=args.clip_seconds)
    models = [
        asr_model("asr-batched", args.model_source, args.batch_size, args),
        asr_model("asr-unbatched", args.model_source, 1, args),
    ]
    base = f"http://127.0.0.1:{PORT}"
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_platform(models, PORT, workdir)
        try:
            wait_ready(f"{base}/ready", proc, timeout_s=600)
            results = {
                m: asyncio.run(measure(base, m, clip, args))
                for m in ("asr-unbatched", "asr-batched")
            }
        finally:
            stop(proc)

    print(
        f"\n{args.requests} transcriptions of a {args.clip_seconds:g} s clip "
        f"at concurrency {args.concurrency}, "
        f"model {Path(args.model_source).name}"
    )
    print(
        f"{'engine':<16}{'transcriptions/s':>18}{'p50 s':>8}{'p99 s':>8}"
        f"{'requests/batch':>16}{'requests/pass':>15}"
    )
    for model, r in results.items():
        print(
            f"{model:<16}{r['per_s']:>18.2f}{r['p50_s']:>8.2f}{r['p99_s']:>8.2f}"
            f"{r['requests_per_batch']:>16.2f}{r['requests_per_pass']:>15.2f}"
        )
    ratio = results["asr-batched"]["per_s"] / results["asr-unbatched"]["per_s"]
    print(f"batched / unbatched throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
