"""Image classification throughput: the platform (Serve batching) against a plain FastAPI
endpoint that runs one image per request (the way the first seed serves captions).

Both load the same model (by default a ViT-Base-sized classifier with random weights, built
here: real compute, no download) on the same CPUs, one after the other, and are driven by
the same client at the same concurrency with one image per request: the plain server at
``POST /classify`` (raw image bytes, the model called on FastAPI's thread pool, one image
per call), the platform at ``/v2/models/{model}/infer`` (Open Inference Protocol, base64
image). Prints images per second, latency p50/p99 and the platform/plain ratio, measured in
this one run.

    python bench/vision_batching.py [--concurrency 32] [--requests 256] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from fastapi import Request  # module level: the endpoint's annotation must resolve here
from launch import ROOT, closed_loop, start_platform, stop, wait_ready

sys.path.insert(0, str(ROOT))
from tests.media_files import image_file  # noqa: E402

PLAIN_PORT, PLATFORM_PORT = 8401, 8402


def build_vit_base(target: Path) -> Path:
    """A ViT-Base/16 image classifier (86M parameters) with random weights."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    if not (target / "config.json").exists():
        labels = {i: f"class-{i}" for i in range(10)}
        ViTForImageClassification(
            ViTConfig(id2label=labels, label2id={v: k for k, v in labels.items()})
        ).save_pretrained(target)
        ViTImageProcessor().save_pretrained(target)
    return target


def plain_app():
    """The baseline: one image per request, straight into a transformers pipeline."""
    import io

    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from PIL import Image
    from transformers import pipeline

    classify = pipeline("image-classification", model=os.environ["BENCH_MODEL_DIR"])
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/classify")
    async def classify_one(request: Request) -> list:
        image = Image.open(io.BytesIO(await request.body())).convert("RGB")
        return await run_in_threadpool(classify, image, top_k=3)  # as a `def` endpoint would

    return app


def start_plain(model_dir: str, cpus: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "BENCH_MODEL_DIR": model_dir,
        "OMP_NUM_THREADS": str(cpus),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "vision_batching:plain_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(PLAIN_PORT),
            "--log-level",
            "warning",
            "--app-dir",
            str(Path(__file__).parent),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def drive(url: str, payload: dict, requests: int, concurrency: int) -> dict:
    async with httpx.AsyncClient(
        timeout=600, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one() -> None:
            (await client.post(url, **payload)).raise_for_status()

        return await closed_loop(one, requests, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", default=None, help="an image-classification model; default: ViT-Base, random"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--cpus", type=int, default=2, help="CPU threads for the model on both sides"
    )
    args = parser.parse_args()

    image = image_file("JPEG", 320, 240)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = args.model_dir or str(build_vit_base(Path(workdir) / "vit-base"))
        plain = start_plain(model_dir, args.cpus)
        try:
            wait_ready(f"http://127.0.0.1:{PLAIN_PORT}/health", plain)
            results["plain FastAPI, 1 image/request"] = asyncio.run(
                drive(
                    f"http://127.0.0.1:{PLAIN_PORT}/classify",
                    {"content": image},
                    args.requests,
                    args.concurrency,
                )
            )
        finally:
            stop(plain)
        model = {
            "model_loading_config": {
                "model_id": "vit",
                "model_source": model_dir,
                "type": "vision",
            },
            "deployment_config": {"ray_actor_options": {"num_cpus": args.cpus}},
            "engine_kwargs": {
                "task": "image-classification",
                "max_batch_size": args.batch_size,
                "top_k": 3,
            },
        }
        platform = start_platform([model], PLATFORM_PORT, workdir)
        try:
            wait_ready(f"http://127.0.0.1:{PLATFORM_PORT}/ready", platform, timeout_s=600)
            body = {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()],
                    }
                ]
            }
            results[f"platform, serve.batch {args.batch_size}"] = asyncio.run(
                drive(
                    f"http://127.0.0.1:{PLATFORM_PORT}/v2/models/vit/infer",
                    {"json": body},
                    args.requests,
                    args.concurrency,
                )
            )
            stats = httpx.get(f"http://127.0.0.1:{PLATFORM_PORT}/ready").json()["models"]["vit"]
        finally:
            stop(platform)

    print(
        f"\n{args.requests} images (320x240 JPEG) at concurrency {args.concurrency}, "
        f"{args.cpus} CPU threads, "
        f"model {Path(model_dir).name}"
    )
    print(f"{'server':<34}{'images/s':>10}{'p50 s':>8}{'p99 s':>8}")
    for name, r in results.items():
        print(f"{name:<34}{r['per_s']:>10.2f}{r['p50_s']:>8.2f}{r['p99_s']:>8.2f}")
    per_pass = stats["batched_requests"] / max(1, stats["forward_passes"])
    print(f"platform images per forward pass: {per_pass:.1f}")
    plain_rate, platform_rate = (r["per_s"] for r in results.values())
    print(f"platform / plain throughput: {platform_rate / plain_rate:.2f}x")


if __name__ == "__main__":
    main()
