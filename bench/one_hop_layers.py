"""CPU per request of the platform's own layers on the one-hop path, against the app they wrap.

On a vLLM replica's HTTP port the platform puts two ASGI layers in front of vLLM's app:
``ObservedRequests`` (request id, metrics, log line) and ``RequestPolicy`` (key, limits, body
checks, media policy, timeout; ``serve/policy``, the router's too). This drives them
in-process, on uvloop, around a stand-in app that reads the body and streams ``--chunks`` SSE
events as vLLM does, with Ray started so the metrics are recorded as on a replica. No network
and no engine: what is left is the layers' own CPU, which the end-to-end benchmark
(``serve_vs_vllm.py``) cannot separate from the noise of a small machine. Prints microseconds
per request for each stack and one line per layered stack:
``layers <stack> / app: +<n> us per request (<x.xx>x)``.

    python bench/one_hop_layers.py [--requests 3000] [--chunks 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.deployments.vllm_ingress import ONE_HOP_ENDPOINTS  # noqa: E402
from serve.policy.observed import ObservedRequests  # noqa: E402
from serve.policy.request_policy import PolicyMount, RequestPolicy, guarded  # noqa: E402
from serve.router.routing import VLLM_ENDPOINTS, RouterSettings  # noqa: E402

MOUNT = PolicyMount("direct", frozenset(VLLM_ENDPOINTS), "m", ONE_HOP_ENDPOINTS)

BODY = json.dumps(
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hello " * 64}],
        "stream": True,
        "max_tokens": 64,
    }
).encode()
CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
)


def stand_in_app(chunks: int):
    """An ASGI app answering like vLLM's streamed chat: reads and parses the body, then events."""

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        json.loads(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    return app


def request_scope() -> dict:
    return {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "http_version": "1.1",
        "path": "/models/m/v1/chat/completions",
        "raw_path": b"/models/m/v1/chat/completions",
        "root_path": "/models/m",
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
    }


async def one_request(app) -> None:
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected

    async def send(message: dict) -> None:
        pass

    await app(request_scope(), receive, send)


async def cpu_us_per_request(app, requests: int) -> float:
    for _ in range(min(200, requests)):  # warm-up
        await one_request(app)
    started = time.process_time()
    for _ in range(requests):
        await one_request(app)
    return 1e6 * (time.process_time() - started) / requests


def stacks(chunks: int) -> dict:
    """The stand-in app alone and inside the layers, as ``VLLMIngressDeployment`` builds them."""
    app, settings = stand_in_app(chunks), RouterSettings(routes={})
    return {
        "app": app,
        "policy": RequestPolicy(app, settings, MOUNT),
        "observed": ObservedRequests(app, "direct", "m", engine_header=True, counts=Counter()),
        "observed+policy": guarded(RequestPolicy(app, settings, MOUNT), Counter()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--chunks", type=int, default=64, help="events per streamed answer")
    args = parser.parse_args()

    import ray
    import uvloop

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        costs = uvloop.run(measure(stacks(args.chunks), args.requests))
    finally:
        ray.shutdown()
    for name, cost in costs.items():
        if name != "app":
            print(
                f"layers {name} / app: +{cost - costs['app']:.0f} us per request "
                f"({cost / costs['app']:.2f}x)"
            )


async def measure(apps: dict, requests: int) -> dict[str, float]:
    costs = {}
    for name, app in apps.items():
        costs[name] = await cpu_us_per_request(app, requests)
        print(f"{name}: {costs[name]:.0f} us CPU per request", flush=True)
    return costs


if __name__ == "__main__":
    main()
