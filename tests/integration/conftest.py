"""One real platform per test session: deploy_app.py on a test YAML, real vLLM on the CPU."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from common.serve_env import haproxy_processes
from tests.conftest import ray_temp_dir

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
SCOPED_KEY = "test-key-embeddings-only"  # the session platform's key for its embedding model alone
LIMITED_KEY = "test-key-three-a-minute"  # the session platform's key with requests_per_minute: 3
TOKEN_KEY = "test-key-sixty-tokens"  # and its key with tokens_per_minute: 60
ALLOWED_ORIGIN = "https://app.example"
IMAGE_HOST = "127.0.0.2"  # a loopback address the session's media policy allows
STARTUP_TIMEOUT_S = 900
# A CTC speech-to-text model beside the default config's Whisper, with small limits to test 413s.
CTC_MODEL = {
    "model_loading_config": {
        "model_id": "tiny-ctc",
        "model_source": "./.models/tiny-wav2vec2",
        "type": "audio",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.25}},
    "engine_kwargs": {
        "task": "speech-to-text",
        "max_audio_bytes": 1024 * 1024,
        "max_audio_duration_s": 60,
        "max_batch_size": 4,
    },
}


def _vision(model_id: str, source: str, **engine_kwargs) -> dict:
    return {
        "model_loading_config": {
            "model_id": model_id,
            "model_source": f"./.models/{source}",
            "type": "vision",
        },
        "deployment_config": {"ray_actor_options": {"num_cpus": 0.05}},
        "engine_kwargs": engine_kwargs,
    }


# The other vision tasks beside the default config's image classifier, co-located: one
# deployment whose replica holds all four.
VISION_GROUP = {
    "name": "vision-extras",
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}},
}
VISION_MODELS = [
    {
        **_vision(model_id, source, **engine_kwargs),
        "group": VISION_GROUP["name"],
        "deployment_config": {},
    }
    for model_id, source, engine_kwargs in [
        ("tiny-detector", "tiny-yolos", {"task": "object-detection", "threshold": 0.0}),
        (
            "tiny-zero-shot",
            "tiny-clip",
            {"task": "zero-shot-image-classification", "candidate_labels": ["cat", "dog"]},
        ),
        ("tiny-captioner", "tiny-blip", {"task": "image-to-text", "max_new_tokens": 8}),
        (
            "tiny-image-embedder",
            "tiny-vit",
            {"task": "image-feature-extraction", "max_image_pixels": 1_000_000},
        ),
    ]
]
# Three weight variants of one classifier, at most two held by the replica at a time.
VISION_MODELS.append(
    {
        **_vision("tiny-vit-variants", "tiny-vit", task="image-classification"),
        "multiplex_config": {
            "variants_dir": "./.models/tiny-vit-variants",
            "max_variants_per_replica": 2,
        },
    }
)

# Beside the default config's voice-chat and rag-lite pipelines: image -> caption -> chat.
DESCRIBE_IMAGE = {
    "model_id": "describe-image",
    "timeout_s": 60,
    "steps": [
        {"task": "caption", "model": "tiny-captioner"},
        {
            "task": "chat",
            "model": "tiny-chat",
            "prompt": "Describe this picture: {text}",
            "max_tokens": 16,
        },
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def platform_url(tmp_path_factory) -> str:
    """Start the platform from ``model_config.yaml`` plus auth and CORS; yield its base URL."""
    config = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    args = config["applications"][0]["args"]
    args["api_keys_env"] = "PLATFORM_TEST_API_KEYS"
    scoped_key = tmp_path_factory.mktemp("keys") / "embed-only"
    scoped_key.write_text(SCOPED_KEY + "\n")  # as a mounted Secret holds it
    args["api_keys"] = [
        {"name": "embed-only", "key_file": str(scoped_key), "models": ["all-minilm-l6-v2"]},
        {"name": "limited", "key_env": "PLATFORM_TEST_LIMITED_KEY", "requests_per_minute": 3},
        {"name": "few-tokens", "key_env": "PLATFORM_TEST_TOKEN_KEY", "tokens_per_minute": 60},
    ]
    args["cors"] = {"allow_origins": [ALLOWED_ORIGIN], "allow_credentials": True}
    args["router"] = {"max_request_bytes": 256 * 1024}
    args["models"] += [CTC_MODEL, *VISION_MODELS]
    args.setdefault("groups", []).append(VISION_GROUP)
    args["pipelines"].append(DESCRIBE_IMAGE)
    # localhost is named but its addresses stay refused; 127.0.0.2 (where a test serves images) is let in
    args["media"] = {
        "allowed_domains": ["localhost", IMAGE_HOST],
        "allowed_networks": [f"{IMAGE_HOST}/32"],
    }
    env = platform_env()
    # The address of a cluster that is gone, as a platform killed without its shutdown leaves it:
    # Ray would wait for it forever; the platform must start a Ray of its own.
    (Path(env["RAY_TMPDIR"]) / "ray").mkdir(exist_ok=True)
    (Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").write_text(
        f"127.0.0.1:{_free_port()}"
    )
    with running_platform(config, tmp_path_factory.mktemp("platform"), env=env) as base:
        yield base


@contextlib.contextmanager
def running_platform(
    config: dict, workdir: Path, address: str | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run ``deploy_app.py`` on ``config`` (written to ``workdir/config.yaml``): on a Ray of its own
    (serving until the end), or applied to the cluster at ``address`` (the command returns once
    live; the cluster keeps serving)."""
    port = _free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = path.with_name("platform.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            deploy_command(path, address),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or platform_env(),
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            if address is not None and proc.wait(STARTUP_TIMEOUT_S) != 0:
                raise RuntimeError(f"deploy_app.py failed:\n{log_path.read_text()[-4000:]}")
            _wait_ready(base, proc if address is None else None, log_path)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            if address is None:  # the platform stopped its own Ray: nothing of it may outlive it
                left = leftover_haproxy(port)
                assert not left, left


def leftover_haproxy(http_port: int) -> list[str]:
    """The command lines of the HAProxy processes still running on the platform's files."""
    return [" ".join(process.info["cmdline"]) for process in haproxy_processes(http_port)]


def deploy_command(config_path: Path, address: str | None = None) -> list[str]:
    return [sys.executable, "deploy_app.py", "--config", str(config_path)] + (
        ["--address", address] if address else []
    )


def platform_env(ray_tmpdir: str | None = None) -> dict[str, str]:
    """The environment of a platform under test: its own Ray temp dir, HAProxy's metrics and stats
    ports free (Ray's defaults are fixed ports on every interface), and its own range of replica
    ports and fallback proxy ports: Serve binds them with SO_REUSEPORT, so two platforms sharing
    one could answer each other's requests."""
    http_ports = random.randrange(32000, 60000, 200)
    return {
        **os.environ,
        "PLATFORM_TEST_API_KEYS": API_KEY,
        "PLATFORM_TEST_LIMITED_KEY": LIMITED_KEY,
        "PLATFORM_TEST_TOKEN_KEY": TOKEN_KEY,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmpdir or ray_temp_dir(),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(_free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_ports),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_ports + 99),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(http_ports + 100),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(http_ports + 199),
    }


def _wait_ready(base: str, proc: subprocess.Popen | None, log_path: Path) -> None:
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"platform exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{base}/ready", headers=auth_headers(), timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(3)
    raise TimeoutError(
        f"platform not ready in {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}"
    )


def wait_for_stats(read, done, timeout_s: float = 30) -> dict:
    """Poll ``read()`` until ``done(stats)`` or the timeout; the last stats, for the assertion."""
    deadline = time.time() + timeout_s
    stats = read()
    while not done(stats) and time.time() < deadline:
        time.sleep(0.2)
        stats = read()
    return stats


def assert_leaving_a_stream_stops_it(
    url: str, model: str, read_stats, counter: str, pause_s: float = 0, attempts: int = 3
) -> dict:
    """Open a long stream at ``url``, read its first line, stop reading for ``pause_s`` (the buffers
    on the way fill up), then leave; assert that the engine counts the stop in ``counter`` and has
    nothing left running. The last stats.

    An attempt shows something only if the engine was still generating when the client left: on a
    busy 2-core machine a stream's first line can come seconds late, after the engine generated all
    of it. Such an attempt is made again; a stop never counted fails all the same."""
    # As many sequences as tiny-chat runs at once, each to its context's end: seconds of work.
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 1000,
        "n": 64,
        "stream": True,
        "ignore_eos": True,
    }
    for _ in range(attempts):
        before = read_stats()
        with (
            httpx.Client(headers=auth_headers(), timeout=60) as c,
            c.stream("POST", url, json=body) as response,
        ):
            lines = (
                response.iter_lines()
            )  # kept: a dropped iterator closes the connection when collected
            first = next(lines)
            assert (
                response.status_code == 200
                and first.startswith("data: {")
                and '"error"' not in first
            ), first
            time.sleep(pause_s)
            generating = read_stats()["unfinished_requests"] > 0
        if generating:
            stats = wait_for_stats(
                read_stats, lambda s: s[counter] > before[counter] and s["unfinished_requests"] == 0
            )
            assert stats[counter] == before[counter] + 1 and stats["unfinished_requests"] == 0, (
                before,
                stats,
            )
            return stats
    raise AssertionError(
        f"in {attempts} attempts the engine finished the stream before the client left"
    )


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def client(platform_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(platform_url) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{platform_url}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )


@pytest.fixture(scope="session")
def http(platform_url) -> httpx.Client:
    with httpx.Client(base_url=platform_url, headers=auth_headers(), timeout=120) as c:
        yield c
