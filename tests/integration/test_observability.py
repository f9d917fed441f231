"""Per-model metrics scraped from Ray's own metrics endpoint after known traffic; request ids
from the client to the response, the error body and the router's, the engine's and vLLM's logs;
a model that cannot start, its phase and error in ``deploy_app.py status`` while the others serve.

A platform of its own (tiny-chat on vLLM, tiny-vit batching) whose Ray exports metrics every
second on a known port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import ray_temp_dir
from tests.integration.conftest import (
    API_KEY,
    ROOT,
    STARTUP_TIMEOUT_S,
    _free_port,
    auth_headers,
    deploy_command,
    platform_env,
    running_platform,
)
from tests.integration.test_openai_api import HELLO
from tests.media_files import b64, image_file, infer_body

CHAT = {
    "model_loading_config": {
        "model_id": "tiny-chat",
        "model_source": "./.models/tiny-chat",
        "type": "vllm",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.25}},
    "engine_kwargs": {
        "max_model_len": 256,
        "max_num_seqs": 8,
        "kv_cache_memory_bytes": 64 * 1024 * 1024,
        "dtype": "float32",
        "enable_log_requests": True,
    },
}
VIT = {
    "model_loading_config": {
        "model_id": "tiny-vit",
        "model_source": "./.models/tiny-vit",
        "type": "vision",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}},
    "engine_kwargs": {"task": "image-classification"},
}
MAX_REQUEST_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """(base URL, metrics URL, Ray temp dir) of a platform that exports its metrics every second."""
    metrics_port, tmpdir = _free_port(), ray_temp_dir()
    env = {
        **platform_env(tmpdir),
        "PLATFORM_METRICS_EXPORT_PORT": str(metrics_port),
        "RAY_metrics_report_interval_ms": "1000",
    }
    config = {
        "proxy_location": "HeadOnly",
        "applications": [
            {
                "name": "platform",
                "route_prefix": "/",
                "import_path": "builders.app_builder:build_app",
                "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
                "args": {
                    "models": [CHAT, VIT],
                    "api_keys_env": "PLATFORM_TEST_API_KEYS",
                    "router": {"max_request_bytes": MAX_REQUEST_BYTES},
                },
            }
        ],
    }
    with running_platform(config, tmp_path_factory.mktemp("observability"), env=env) as base:
        yield base, f"http://127.0.0.1:{metrics_port}/metrics", Path(tmpdir)


def _samples(metrics_url: str) -> dict[str, dict[frozenset, float]]:
    """Every ``ray_platform_*`` and ``ray_vllm_*`` sample, summed over processes, by name and labels
    (the process labels Ray adds dropped)."""
    samples: dict[str, dict[frozenset, float]] = defaultdict(lambda: defaultdict(float))
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        match = re.fullmatch(r"(ray_(?:platform_|vllm_)\w+)\{(.*)\} (\S+)", line)
        if match:
            labels = frozenset(
                (k, v)
                for k, v in re.findall(r'(\w+)="([^"]*)"', match[2])
                if k in ("model", "endpoint", "path", "status", "reason", "model_name", "le")
            )
            samples[match[1]][labels] += float(match[3])
    return samples


def _value(samples, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for key, v in samples.get(name, {}).items() if wanted <= key)


def test_per_model_metrics_after_known_traffic(platform):
    base, metrics_url, _ = platform
    router = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    direct = openai.OpenAI(
        base_url=f"{base}/models/tiny-chat/v1", api_key=API_KEY, max_retries=0, timeout=120
    )
    for _ in range(3):
        router.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=8)
    for client in (router, router, direct, direct):
        chunks = list(
            client.chat.completions.create(
                model="tiny-chat",
                messages=HELLO,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        # vLLM merges a request's tokens into one chunk when its front end falls behind (a loaded CI machine),
        # so the tokens are counted from usage; two events or more still give an inter-token latency.
        assert chunks[-1].usage.completion_tokens == 8 and len(chunks) >= 2
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as http:
        assert (
            http.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO}).status_code
            == 404
        )
        too_large = http.post(
            "/v1/chat/completions",
            content=b"{" + b" " * MAX_REQUEST_BYTES + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert too_large.status_code == 413
        for _ in range(4):
            assert (
                http.post(
                    "/v2/models/tiny-vit/infer", json=infer_body([b64(image_file())], "image")
                ).status_code
                == 200
            )

    chat = {"model": "tiny-chat", "endpoint": "/v1/chat/completions"}
    expected = [
        (("ray_platform_requests_total",), {**chat, "path": "router", "status": "200"}, 5),
        (("ray_platform_requests_total",), {**chat, "path": "direct", "status": "200"}, 2),
        (("ray_platform_requests_total",), {"model": "-", "status": "404"}, 1),
        (
            ("ray_platform_requests_total",),
            {"model": "tiny-vit", "endpoint": "/v2/models/{name}/infer", "status": "200"},
            4,
        ),
        (
            ("ray_platform_rejected_requests_total",),
            {"reason": "request_too_large", "path": "router"},
            1,
        ),
        (("ray_platform_request_latency_s_count",), {**chat, "path": "router"}, 5),
        (("ray_platform_time_to_first_token_s_count",), {**chat, "path": "router"}, 2),
        (("ray_platform_time_to_first_token_s_count",), {**chat, "path": "direct"}, 2),
        (("ray_platform_inter_token_latency_s_count",), {**chat, "path": "direct"}, 2),
        # vLLM's own engine metrics, through Ray's system too
        (("ray_vllm_request_success_total",), {"model_name": "tiny-chat"}, 7),
    ]
    # Each replica exports its own metrics on its own schedule: the router's may be in while the
    # image model's batches (recorded on its replica) are not yet, so wait for both.
    deadline = time.time() + 90
    while True:
        samples = _samples(metrics_url)
        got = [
            (name, labels, _value(samples, name, **labels), want)
            for (name,), labels, want in expected
        ]
        batches = _value(samples, "ray_platform_batch_size_count", model="tiny-vit")
        if all(value == want for *_, value, want in got) and batches or time.time() > deadline:
            break
        time.sleep(1)
    assert [g for g in got if g[2] != g[3]] == [], (
        got,
        sorted(samples),
        dict(samples["ray_platform_requests_total"]),
    )
    assert 1 <= batches <= 4
    assert (
        _value(
            samples, "ray_platform_time_to_first_token_s_bucket", le="+Inf", path="router", **chat
        )
        == 2
    )
    for gauge in (
        "ray_vllm_num_requests_running",
        "ray_vllm_num_requests_waiting",
        "ray_vllm_kv_cache_usage_perc",
    ):
        assert {"model_name": "tiny-chat"}.items() <= dict(next(iter(samples[gauge]))).items(), (
            gauge
        )


def test_the_request_id_goes_from_the_client_to_the_answer_and_every_log(platform):
    base, _, tmpdir = platform
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as http:
        answer = http.post(
            "/v1/chat/completions",
            headers={"X-Request-Id": "obs-router-7"},
            json={"model": "tiny-chat", "messages": HELLO, "max_tokens": 4},
        )
        with http.stream(
            "POST",
            "/models/tiny-chat/v1/chat/completions",
            headers={"X-Request-Id": "obs-direct-8"},
            json={"model": "tiny-chat", "messages": HELLO, "max_tokens": 4, "stream": True},
        ) as stream:
            assert stream.headers["x-request-id"] == "obs-direct-8"
            stream.read()
        error = http.post(
            "/v1/chat/completions",
            headers={"X-Request-Id": "obs-error-9"},
            json={"model": "tiny-chat", "messages": "not a list"},
        )
        made_up = http.post(
            "/v1/chat/completions", json={"model": "tiny-chat", "messages": HELLO, "max_tokens": 1}
        )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "obs-router-7"
    assert error.status_code == 400 and error.json()["error"]["request_id"] == "obs-error-9"
    assert error.headers["x-request-id"] == "obs-error-9"
    assert re.fullmatch(r"[0-9a-f-]{32,36}", made_up.headers["x-request-id"])

    logs = Path(tmpdir) / "ray" / "session_latest" / "logs"

    def lines_with(text: str) -> list[str]:
        return [
            line
            for path in logs.rglob("*")
            if path.is_file() and path.suffix in (".log", ".out", ".err")
            for line in path.read_text(errors="replace").splitlines()
            if text in line
        ]

    deadline = time.time() + 30
    while time.time() < deadline and not all(
        lines_with(i) for i in ("obs-router-7", "obs-direct-8")
    ):
        time.sleep(1)
    router_lines = lines_with("obs-router-7")
    assert any(
        "POST /v1/chat/completions model=tiny-chat status=200" in line for line in router_lines
    ), router_lines
    assert any("tiny-chat chat request_id=obs-router-7" in line for line in router_lines), (
        router_lines
    )
    # vLLM's own log lines carry the id behind a prefix of its own, on both paths
    for request_id in ("obs-router-7", "obs-direct-8"):
        assert any(
            re.search(rf"chatcmpl-[0-9a-f]{{8}}-{request_id}", line)
            for line in lines_with(request_id)
        ), lines_with(request_id)


def test_a_model_that_cannot_start_shows_why_while_the_others_serve(tmp_path):
    """One model's weights cannot be found: `deploy_app.py status` names its error while the
    replica is retried and after Serve gives up, the other model serves, and the deploy says so."""
    bad = {
        **VIT,
        "model_loading_config": {
            "model_id": "bad-vit",
            "model_source": "no-such-org/no-such-model",
            "type": "vision",
        },
    }
    # Weights from a cloud URI (file:// stands in for s3://) are copied to the node while the replica starts.
    cloud = {
        **VIT,
        "model_loading_config": {
            "model_id": "cloud-vit",
            "model_source": f"file://{ROOT}/.models/tiny-vit",
            "type": "vision",
        },
    }
    port, env = (
        _free_port(),
        {**platform_env(ray_temp_dir()), "PLATFORM_MODEL_CACHE": str(tmp_path / "cache")},
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "proxy_location": "HeadOnly",
                "http_options": {"host": "127.0.0.1", "port": port},
                "applications": [
                    {
                        "name": "platform",
                        "route_prefix": "/",
                        "import_path": "builders.app_builder:build_app",
                        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
                        "args": {
                            "models": [VIT, bad, cloud],
                            "api_keys_env": "PLATFORM_TEST_API_KEYS",
                        },
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "platform.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            deploy_command(path),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        seen: list[str] = []
        deadline = time.time() + STARTUP_TIMEOUT_S
        while (
            "ready: http" not in log_path.read_text()
            and time.time() < deadline
            and proc.poll() is None
        ):
            status = subprocess.run(
                [sys.executable, "deploy_app.py", "status"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            seen += [line for line in status.stdout.splitlines() if "bad-vit" in line]
            time.sleep(2)
        output = log_path.read_text()
        assert "ready: http" in output, output[-4000:]
        assert "failed to start: platform.bad-vit" in output and "the other models serve" in output
        # While Serve retried the replica, and once it gave up, the status named the replica's error.
        assert any(
            re.search(r"bad-vit\s+(failing|failed)\s+.*(couldn't|Error)", line) for line in seen
        ), seen
        final = subprocess.run(
            [sys.executable, "deploy_app.py", "status"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert final.returncode == 1, final.stdout + final.stderr
        rows = {line.split()[1]: line.split()[2] for line in final.stdout.splitlines()[1:]}
        assert rows == {"tiny-vit": "ready", "bad-vit": "failed", "cloud-vit": "ready"}, (
            final.stdout
        )
        # the copied model's replica reported its download: the whole model, once
        weights = sum(
            f.stat().st_size for f in (ROOT / ".models" / "tiny-vit").rglob("*") if f.is_file()
        )
        (cloud_line,) = [line for line in final.stdout.splitlines() if "cloud-vit" in line]
        assert re.search(rf"downloaded {weights / 2**20:.1f} MiB in \d+ s", cloud_line), (
            cloud_line,
            weights,
        )
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/tiny-vit/infer",
            headers=auth_headers(),
            timeout=60,
            json=infer_body([b64(image_file())], "image"),
        )
        assert answer.status_code == 200, answer.text
        # /ready (for load balancers and the console) says the same
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", headers=auth_headers(), timeout=60)
        assert ready.status_code == 503
        models = ready.json()["models"]
        assert (
            models["tiny-vit"]["ready"]
            and models["tiny-vit"]["phase"] == "ready"
            and models["cloud-vit"]["ready"]
        )
        assert models["bad-vit"]["phase"] == "failed" and not models["bad-vit"]["ready"], models
        assert re.search(r"couldn't|Error", models["bad-vit"]["phase_detail"]), models
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
