"""Start, wait for and stop the servers a benchmark drives (the platform from a config dict)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]


def default_platform_args() -> dict[str, Any]:
    """The platform ``args`` of the default config, ``model_config.yaml``."""
    return yaml.safe_load((ROOT / "model_config.yaml").read_text())["applications"][0]["args"]


def default_models(*model_ids: str) -> list[dict[str, Any]]:
    """The named models of the default config, each deployed on its own (out of its group)."""
    models = {m["model_loading_config"]["model_id"]: m for m in default_platform_args()["models"]}
    return [
        {key: value for key, value in models[model_id].items() if key != "group"}
        for model_id in model_ids
    ]


def start_platform(
    models: list[dict[str, Any]],
    port: int,
    workdir: str,
    extra_args: tuple[str, ...] = (),
    platform_args: dict[str, Any] | None = None,
) -> subprocess.Popen:
    """``deploy_app.py`` on a one-application config serving ``models`` at ``port``
    (``platform_args``: the application's other args, ``router: ...`` and the like)."""
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "applications": [
            {
                "name": "bench",
                "route_prefix": "/",
                "import_path": "builders.app_builder:build_app",
                "args": {"models": models, **(platform_args or {})},
            }
        ],
    }
    path = Path(workdir) / "bench_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "deploy_app.py"), "--config", str(path), *extra_args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"},
        start_new_session=True,
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def closed_loop(request, requests: int, concurrency: int) -> dict[str, float]:
    """Await ``request()`` ``requests`` times, ``concurrency`` at a time, after one warm-up round;
    returns completions per second and latency p50/p99 in seconds."""
    import asyncio
    import statistics

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            start = time.perf_counter()
            await request()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "per_s": requests / elapsed,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }
