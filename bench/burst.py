"""How fast a full model says no: the 503 with ``Retry-After`` that a bounded queue answers.

Serves one image classifier that takes one request at a time and queues one more
(``max_ongoing_requests: 1``, ``max_queued_requests: 1``; each batch waits 2 s for company, so
the replica stays busy). Then, in the same run:

- ``/health`` (the router alone, no model call): the floor of any answer through Serve's proxy;
- single refusals: with the replica and its queue full, one request at a time;
- a burst of ``--burst`` requests at once (10x the capacity of 2 by default).

Prints p50 / p90 / max of each, in ms, and each refusal's p50 as a ratio over ``/health``'s, and
the answers by status (a single request sent as a slot frees is admitted: a 200).

    python bench/burst.py [--burst 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time

import httpx
from launch import ROOT, start_platform, stop, wait_ready

sys.path.insert(0, str(ROOT))
from tests.media_files import image_file, infer_body  # noqa: E402  (the repository's test images)

PORT = 8434
MODEL = {
    "model_loading_config": {
        "model_id": "one-at-a-time",
        "model_source": "./.models/tiny-vit",
        "type": "vision",
    },
    "deployment_config": {
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        "ray_actor_options": {"num_cpus": 0.25},
    },
    "engine_kwargs": {
        "task": "image-classification",
        "max_batch_size": 4,
        "batch_wait_timeout_s": 2,
    },
}
INFER_PATH = "/v2/models/one-at-a-time/infer"


def summary(label: str, waits_s: list[float], floor_ms: float | None = None) -> float:
    ms = sorted(w * 1000 for w in waits_s)
    p50, p90 = statistics.median(ms), ms[int(0.9 * (len(ms) - 1))]
    ratio = f"  ({p50 / floor_ms:.1f}x /health)" if floor_ms else ""
    print(
        f"{label:<34} n={len(ms):>3}  p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  "
        f"max {ms[-1]:7.1f} ms{ratio}"
    )
    return p50


async def timed(client: httpx.AsyncClient, method: str, path: str, **kwargs) -> tuple[int, float]:
    start = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    return response.status_code, time.perf_counter() - start


async def fill(client: httpx.AsyncClient, body: dict) -> list[asyncio.Task]:
    """Two requests: one running, one queued; the replica then stays busy for about 4 s."""
    held = [asyncio.create_task(client.post(INFER_PATH, json=body)) for _ in range(2)]
    await asyncio.sleep(0.5)
    return held


async def measure(burst: int, rounds: int) -> None:
    body = infer_body([base64.b64encode(image_file()).decode()])
    health, single, bursts, statuses = [], [], [], []
    limits = httpx.Limits(max_connections=burst + 4)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{PORT}", timeout=120, limits=limits
    ) as client:
        for _ in range(rounds):
            for _ in range(10):
                health.append((await timed(client, "GET", "/health"))[1])
            held = await fill(client, body)
            for _ in range(5):
                status, wait = await timed(client, "POST", INFER_PATH, json=body)
                statuses.append(status)
                if status == 503:
                    single.append(wait)
            await asyncio.gather(*held)
            answers = await asyncio.gather(
                *(timed(client, "POST", INFER_PATH, json=body) for _ in range(burst))
            )
            statuses += [status for status, _ in answers]
            bursts += [wait for status, wait in answers if status == 503]
    floor = summary("GET /health (router alone)", health)
    summary("503, one at a time, model full", single, floor)
    summary(f"503 in a burst of {burst} at once", bursts, floor)
    print("statuses:", {status: statuses.count(status) for status in sorted(set(statuses))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_platform([MODEL], PORT, workdir)
        try:
            wait_ready(f"http://127.0.0.1:{PORT}/ready", proc, timeout_s=600)
            asyncio.run(measure(args.burst, args.rounds))
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
