"""Soak: mixed traffic to every model type of the default config for minutes, with faults.

Runs the default config's models (`model_config.yaml`), sends a steady mix (streamed and
plain chat, completions, embeddings, speech-to-text, text-to-speech, image and video
classification, and malformed requests), and every ``--kill-every-s`` SIGKILLs one engine
replica, chosen in turn. Counts, per kind of request: sent, answered by status, and lost (no
HTTP answer, or a stream that ended without ``[DONE]``). Ends with ``lost: <n>``; a fault
costs 503s (with ``Retry-After``) and error events, never a lost request.

    python bench/soak.py [--minutes 10] [--concurrency 6] [--kill-every-s 90]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import random
import signal
import sys
import tempfile
import time

import httpx
from launch import ROOT, default_platform_args, start_platform, stop, wait_ready

sys.path.insert(0, str(ROOT))
from tests.audio_files import audio_file  # noqa: E402
from tests.media_files import b64, image_file, infer_body, video_file  # noqa: E402

PORT = 8431
HELLO = [{"role": "user", "content": "hello there"}]


def requests_by_kind() -> dict[str, dict]:
    """One request of each kind: (method, path, keyword arguments for httpx, streamed)."""
    wav = audio_file("wav", "pcm_s16le", seconds=1.0)
    return {
        "chat-stream": {
            "url": "/v1/chat/completions",
            "json": {"model": "tiny-chat", "messages": HELLO, "max_tokens": 32, "stream": True},
        },
        "chat": {
            "url": "/v1/chat/completions",
            "json": {"model": "tiny-chat", "messages": HELLO, "max_tokens": 16},
        },
        "lora-chat": {
            "url": "/v1/chat/completions",
            "json": {"model": "tiny-chat:sql", "messages": HELLO, "max_tokens": 16},
        },
        "completion": {
            "url": "/v1/completions",
            "json": {"model": "tiny-chat", "prompt": "once", "max_tokens": 16},
        },
        "embedding": {
            "url": "/v1/embeddings",
            "json": {"model": "all-minilm-l6-v2", "input": ["a", "b"]},
        },
        "transcription": {
            "url": "/v1/audio/transcriptions",
            "data": {"model": "tiny-whisper"},
            "files": {"file": ("a.wav", wav, "audio/wav")},
        },
        "speech": {
            "url": "/v1/audio/speech",
            "json": {
                "model": "tiny-tts",
                "input": "hello",
                "voice": "alloy",
                "response_format": "wav",
            },
        },
        "image": {"url": "/v2/models/tiny-vit/infer", "json": infer_body([b64(image_file())])},
        "video": {
            "url": "/v2/models/tiny-videomae/infer",
            "json": infer_body([b64(video_file())], input_name="video"),
        },
        "malformed": {
            "url": "/v1/chat/completions",
            "content": b'{"model": "tiny-chat", "messages": [',
            "headers": {"content-type": "application/json"},
        },
    }


class Tally:
    def __init__(self):
        self.sent = collections.Counter()
        self.statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.lost: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.error_events = collections.Counter()

    def report(self, kills: list[str], minutes: float) -> None:
        print(
            f"\nsoak: {minutes:.1f} min, {sum(self.sent.values())} requests, "
            f"replicas killed: {len(kills)} "
            f"({', '.join(kills)})"
        )
        print(f"{'kind':<14}{'sent':>7}  answered by status{'':<22}lost")
        for kind in sorted(self.sent):
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses[kind].items()))
            lost = ", ".join(f"{why}: {n}" for why, n in self.lost[kind].items()) or "0"
            print(f"{kind:<14}{self.sent[kind]:>7}  {statuses:<40}{lost}")
        print(f"streams ended by an error event: {sum(self.error_events.values())}")
        print(f"lost: {sum(sum(c.values()) for c in self.lost.values())}")


async def send(client: httpx.AsyncClient, kind: str, request: dict, tally: Tally) -> None:
    tally.sent[kind] += 1
    try:
        if kind == "chat-stream":
            async with client.stream("POST", **request) as response:
                lines = [line async for line in response.aiter_lines() if line]
            tally.statuses[kind][response.status_code] += 1
            if response.status_code == 200:
                if lines[-1:] != ["data: [DONE]"]:
                    tally.lost[kind]["stream without [DONE]"] += 1
                elif len(lines) > 1 and lines[-2].startswith('data: {"error"'):
                    tally.error_events[kind] += 1
            return
        response = await client.post(**request)
        tally.statuses[kind][response.status_code] += 1
    except httpx.HTTPError as err:
        tally.lost[kind][type(err).__name__] += 1


async def traffic(base: str, deadline: float, concurrency: int, tally: Tally) -> None:
    kinds = requests_by_kind()
    names = itertools.cycle(random.Random(0).sample(list(kinds) * 4, len(kinds) * 4))
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300, connect=10)) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                kind = next(names)
                await send(client, kind, kinds[kind], tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def faults(base: str, deadline: float, every_s: float, kills: list[str]) -> None:
    """SIGKILL one engine replica every ``every_s``, the models in turn (pid from /ready)."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        models = None
        while time.monotonic() + every_s < deadline:
            await asyncio.sleep(every_s)
            ready = (await client.get("/ready")).json()["models"]
            models = models or itertools.cycle(
                sorted(m for m, s in ready.items() if "placement" in s)
            )
            model = next(models)
            pid = ready.get(model, {}).get("placement", {}).get("pid")
            if pid:
                os.kill(pid, signal.SIGKILL)
                kills.append(model)
                print(
                    f"  {time.strftime('%H:%M:%S')} killed {model}'s replica (pid {pid})",
                    flush=True,
                )


async def soak(base: str, minutes: float, concurrency: int, kill_every_s: float) -> None:
    tally, kills = Tally(), []
    start = time.monotonic()
    deadline = start + minutes * 60
    await asyncio.gather(
        traffic(base, deadline, concurrency, tally), faults(base, deadline, kill_every_s, kills)
    )
    tally.report(kills, (time.monotonic() - start) / 60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--kill-every-s", type=float, default=90)
    args = parser.parse_args()
    config = default_platform_args()
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_platform(
            config["models"], PORT, workdir, platform_args={"groups": config.get("groups", [])}
        )
        try:
            wait_ready(f"http://127.0.0.1:{PORT}/ready", proc, timeout_s=900)
            asyncio.run(
                soak(f"http://127.0.0.1:{PORT}", args.minutes, args.concurrency, args.kill_every_s)
            )
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
