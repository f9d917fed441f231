"""Router memory under concurrent maximum-size uploads: the bound ``router.max_upload_memory_bytes``
holds.

Serves the default config's speech-to-text and video models, then sends ``--concurrency``
uploads at once, each of the largest size its model accepts (a 25 MB file to
``/v1/audio/transcriptions``; a 100 MB video as base64 JSON to ``/v2/models/tiny-videomae/infer``),
and samples the router replica's resident memory meanwhile. Prints its peak over its idle
memory against the configured bound, and the answers by status (503 with ``Retry-After`` once
the router holds all the bound allows; the bytes are random, so the engines answer 400).

    python bench/upload_memory.py [--concurrency 50] [--bound-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import tempfile
import threading
import time

import httpx
import psutil
from launch import default_models, start_platform, stop, wait_ready

PORT = 8432
MIB = 1024 * 1024


def router_process() -> psutil.Process:
    """The router replica (Ray names its process after the actor)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any("MultiModelRouter" in part for part in proc.info["cmdline"] or []):
            return proc
    raise RuntimeError("no router replica process found")


class PeakRSS(threading.Thread):
    def __init__(self, proc: psutil.Process):
        super().__init__(daemon=True)
        self.proc, self.peak, self.running = proc, proc.memory_info().rss, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)


async def uploads(
    base: str, concurrency: int, audio_bytes: int, video_bytes: int
) -> collections.Counter:
    audio = os.urandom(audio_bytes)
    video_body = json.dumps(
        {
            "inputs": [
                {
                    "name": "video",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(os.urandom(video_bytes)).decode()],
                }
            ]
        }
    ).encode()
    statuses = collections.Counter()
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:

        async def one(i: int) -> None:
            if i % 2:
                response = await client.post(
                    "/v2/models/tiny-videomae/infer",
                    content=video_body,
                    headers={"content-type": "application/json"},
                )
            else:
                response = await client.post(
                    "/v1/audio/transcriptions",
                    data={"model": "tiny-whisper"},
                    files={"file": ("a.wav", audio, "audio/wav")},
                )
            statuses[(("video" if i % 2 else "audio"), response.status_code)] += 1

        await asyncio.gather(*(one(i) for i in range(concurrency)))
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--bound-mib", type=int, default=1024, help="router.max_upload_memory_bytes, in MiB"
    )
    args = parser.parse_args()
    models = default_models("tiny-whisper", "tiny-videomae")
    audio_bytes, video_bytes = 25 * MIB, 100 * MIB  # the models' default limits
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_platform(
            models,
            PORT,
            workdir,
            platform_args={"router": {"max_upload_memory_bytes": args.bound_mib * MIB}},
        )
        try:
            wait_ready(f"http://127.0.0.1:{PORT}/ready", proc, timeout_s=600)
            router = router_process()
            idle = router.memory_info().rss
            sampler = PeakRSS(router)
            sampler.start()
            start = time.monotonic()
            statuses = asyncio.run(
                uploads(f"http://127.0.0.1:{PORT}", args.concurrency, audio_bytes, video_bytes)
            )
            sampler.running = False
            print(
                f"{args.concurrency} concurrent uploads "
                "(25 MiB audio files, 100 MiB videos as base64 JSON) "
                f"in {time.monotonic() - start:.0f} s"
            )
            print(
                "answers:",
                ", ".join(
                    f"{kind} {status}: {n}" for (kind, status), n in sorted(statuses.items())
                ),
            )
            print(
                f"router RSS idle {idle / MIB:.0f} MiB, peak {sampler.peak / MIB:.0f} MiB, "
                f"growth {(sampler.peak - idle) / MIB:.0f} MiB "
                f"against a bound of {args.bound_mib} MiB"
            )
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
