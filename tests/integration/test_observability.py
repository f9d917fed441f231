"""Per-model metrics scraped from Ray's own metrics endpoint after known traffic; request ids
from the client to the response, the error body and the router's, the engine's and vLLM's logs;
a model that cannot start, its phase and error in ``deploy_app.py status`` while the others serve.

On the session platform, whose Ray exports metrics every second on a known port; the counts are
what this module's own traffic added to them. These tests read its Ray's metrics and logs, so
they skip under ``PLATFORM_URL``.
"""

from __future__ import annotations

import contextlib
import copy
import re
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import openai
import pytest
import yaml

from tests.integration.helpers import (
    API_KEY,
    HELLO,
    ROOT,
    STARTUP_TIMEOUT_S,
    auth_headers,
    deploy_command,
    fresh_ready,
    wait_until,
)
from tests.integration.session_config import CHAT
from tests.media_files import b64, image_file, infer_body

MAX_REQUEST_BYTES = 256 * 1024  # the session config's router.max_request_bytes
STATUS_POLL_S = 3  # `deploy_app.py status` costs a second or two of CPU per read
VIT = {
    "model_loading_config": {
        "model_id": "tiny-vit",
        "model_source": "./.models/tiny-vit",
        "type": "vision",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.05}},
    "engine_kwargs": {"task": "image-classification"},
}


@pytest.fixture(scope="module")
def owned(platform):
    return platform.require_owned()


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


def _settled_samples(metrics_url: str) -> dict[str, dict[frozenset, float]]:
    """The samples once the earlier tests' traffic is all exported: two reads 3 s apart (three
    export intervals) that agree."""
    reads: list[dict] = []

    def last_two() -> list[dict]:
        reads.append(_samples(metrics_url))
        return reads[-2:]

    two = wait_until(last_two, lambda t: len(t) == 2 and t[0] == t[1], timeout_s=60, every_s=3)
    assert two[0] == two[-1], "the metrics did not settle in 60 s"
    return two[-1]


def _added(before, after, name: str, **labels) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


def test_per_model_metrics_after_known_traffic(owned):
    base, metrics_url = owned.url, owned.metrics_url
    before = _settled_samples(metrics_url)
    router = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    direct = openai.OpenAI(
        base_url=f"{base}/models/{CHAT}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )
    for _ in range(3):
        router.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=8)
    for client in (router, router, direct, direct):
        chunks = list(
            client.chat.completions.create(
                model=CHAT,
                messages=HELLO,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        # vLLM merges a request's tokens into one chunk when its front end falls behind (a loaded
        # CI machine), so the tokens are counted from usage; two events or more still give an
        # inter-token latency.
        assert chunks[-1].usage.completion_tokens == 8 and len(chunks) >= 2
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as http:
        nope = http.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO})
        assert nope.status_code == 404
        too_large = http.post(
            "/v1/chat/completions",
            content=b"{" + b" " * MAX_REQUEST_BYTES + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert too_large.status_code == 413
        image = infer_body([b64(image_file())], "image")
        for _ in range(4):
            assert http.post("/v2/models/tiny-vit/infer", json=image).status_code == 200

    chat = {"model": CHAT, "endpoint": "/v1/chat/completions"}
    infer = {"model": "tiny-vit", "endpoint": "/v2/models/{name}/infer"}
    expected = [
        ("ray_platform_requests_total", {**chat, "path": "router", "status": "200"}, 5),
        ("ray_platform_requests_total", {**chat, "path": "direct", "status": "200"}, 2),
        ("ray_platform_requests_total", {"model": "-", "status": "404"}, 1),
        ("ray_platform_requests_total", {**infer, "status": "200"}, 4),
        (
            "ray_platform_rejected_requests_total",
            {"reason": "request_too_large", "path": "router"},
            1,
        ),
        ("ray_platform_request_latency_s_count", {**chat, "path": "router"}, 5),
        ("ray_platform_time_to_first_token_s_count", {**chat, "path": "router"}, 2),
        ("ray_platform_time_to_first_token_s_bucket", {**chat, "path": "router", "le": "+Inf"}, 2),
        ("ray_platform_time_to_first_token_s_count", {**chat, "path": "direct"}, 2),
        ("ray_platform_inter_token_latency_s_count", {**chat, "path": "direct"}, 2),
        # vLLM's own engine metrics, through Ray's system too
        ("ray_vllm_request_success_total", {"model_name": CHAT}, 7),
    ]

    # Each replica exports its own metrics on its own schedule: the router's may be in while the
    # image model's batches (recorded on its replica) are not yet, so wait for all.
    def added() -> tuple[list, float]:
        after = _samples(metrics_url)
        got = [
            (name, labels, _added(before, after, name, **labels), want)
            for name, labels, want in expected
        ]
        return got, _added(before, after, "ray_platform_batch_size_count", model="tiny-vit")

    got, batches = wait_until(
        added, lambda r: all(g[2] == g[3] for g in r[0]) and r[1] > 0, timeout_s=90, every_s=1
    )
    assert [g for g in got if g[2] != g[3]] == [], got
    assert 1 <= batches <= 4
    assert _gauges_missing_while_generating(router, metrics_url) == []


def _gauges_missing_while_generating(router: openai.OpenAI, metrics_url: str) -> list[str]:
    """vLLM's gauges of the chat model that Ray's metrics lack while a stream is generating.

    vLLM sets its gauges on each engine step, and Ray drops a gauge series that no process
    refreshed for two export intervals: an idle engine has none, so they are read mid-stream."""
    gauges = (
        "ray_vllm_num_requests_running",
        "ray_vllm_num_requests_waiting",
        "ray_vllm_kv_cache_usage_perc",
    )

    def missing() -> list[str]:
        samples = _samples(metrics_url)
        return [g for g in gauges if not any(("model_name", CHAT) in s for s in samples[g])]

    deadline, last_read, absent = time.monotonic() + 90, 0.0, list(gauges)
    while absent and time.monotonic() < deadline:
        stream = router.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            max_tokens=1000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        with stream:
            for _ in stream:
                if time.monotonic() - last_read > 0.5:
                    last_read, absent = time.monotonic(), missing()
                    if not absent:
                        break
    return absent


def test_the_request_id_goes_from_the_client_to_the_answer_and_every_log(owned):
    base, tmpdir = owned.url, owned.ray_tmpdir
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as http:
        answer = http.post(
            "/v1/chat/completions",
            headers={"X-Request-Id": "obs-router-7"},
            json={"model": CHAT, "messages": HELLO, "max_tokens": 4},
        )
        with http.stream(
            "POST",
            f"/models/{CHAT}/v1/chat/completions",
            headers={"X-Request-Id": "obs-direct-8"},
            json={"model": CHAT, "messages": HELLO, "max_tokens": 4, "stream": True},
        ) as stream:
            assert stream.headers["x-request-id"] == "obs-direct-8"
            stream.read()
        error = http.post(
            "/v1/chat/completions",
            headers={"X-Request-Id": "obs-error-9"},
            json={"model": CHAT, "messages": "not a list"},
        )
        made_up = http.post(
            "/v1/chat/completions", json={"model": CHAT, "messages": HELLO, "max_tokens": 1}
        )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "obs-router-7"
    assert error.status_code == 400 and error.json()["error"]["request_id"] == "obs-error-9"
    assert error.headers["x-request-id"] == "obs-error-9"
    assert re.fullmatch(r"[0-9a-f-]{32,36}", made_up.headers["x-request-id"])

    logs = tmpdir / "ray" / "session_latest" / "logs"

    def lines_with(text: str) -> list[str]:
        return [
            line
            for path in logs.rglob("*")
            if path.is_file() and path.suffix in (".log", ".out", ".err")
            for line in path.read_text(errors="replace").splitlines()
            if text in line
        ]

    wait_until(lambda: [lines_with(i) for i in ("obs-router-7", "obs-direct-8")], all, every_s=1)
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


@pytest.mark.edits_platform
def test_a_model_that_cannot_start_shows_why_while_the_others_serve(owned):
    """An edit adds a model whose weights cannot be found and one copied from a cloud URI:
    `deploy_app.py status` names the error while the replica is retried and after Serve gives up,
    every other model serves, and the apply says so. The edit is then taken back."""
    bad = {
        **VIT,
        "model_loading_config": {
            "model_id": "bad-vit",
            "model_source": "no-such-org/no-such-model",
            "type": "vision",
        },
        # one retry (Serve's default is 3 tries per replica): the status is read while the
        # replica is retried and after Serve gave up, with one failed start less to wait for
        "deployment_config": {**VIT["deployment_config"], "max_constructor_retry_count": 2},
    }
    # Weights from a cloud URI (file:// stands in for s3://) are copied to the node while the
    # replica starts.
    cloud = {
        **VIT,
        "model_loading_config": {
            "model_id": "cloud-vit",
            "model_source": f"file://{ROOT}/.models/tiny-vit",
            "type": "vision",
        },
    }
    edited = copy.deepcopy(owned.config)
    edited["applications"][0]["args"]["models"] += [bad, cloud]
    owned.config_path.write_text(yaml.safe_dump(edited))
    owned.edited = True  # applied below, while `deploy_app.py status` is read
    log_path = owned.config_path.with_name("bad-model-apply.log")

    def status() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "deploy_app.py", "status"],
            cwd=ROOT,
            env=owned.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        with open(log_path, "w") as log:
            apply = subprocess.Popen(
                deploy_command(owned.config_path, "auto"),
                cwd=ROOT,
                env=owned.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        seen: list[str] = []  # what status said of bad-vit while the apply waited
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while apply.poll() is None and time.monotonic() < deadline:
            seen += [line for line in status().stdout.splitlines() if "bad-vit" in line]
            # a read every few seconds sees each retry (seconds apart) and leaves the CPU to them
            with contextlib.suppress(subprocess.TimeoutExpired):
                apply.wait(STATUS_POLL_S)
        assert apply.wait(60) == 1, log_path.read_text()[-4000:]  # 1: a model failed to start
        output = log_path.read_text()
        assert "ready: http" in output, output[-4000:]
        assert "failed to start: platform.bad-vit" in output and "the other models serve" in output
        # While Serve retried the replica, and once it gave up, the status named its error.
        assert any(
            re.search(r"bad-vit\s+(failing|failed)\s+.*(couldn't|Error)", s) for s in seen
        ), seen
        final = status()
        assert final.returncode == 1, final.stdout + final.stderr
        rows = {line.split()[1]: line.split()[2] for line in final.stdout.splitlines()[1:]}
        assert rows.pop("bad-vit") == "failed" and rows.pop("cloud-vit") == "ready", final.stdout
        assert set(rows.values()) == {"ready"}, final.stdout  # every other model serves
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
            f"{owned.url}/v2/models/cloud-vit/infer",
            headers=auth_headers(),
            timeout=60,
            json=infer_body([b64(image_file())], "image"),
        )
        assert answer.status_code == 200, answer.text
        # /ready (for load balancers and the console) says the same
        ready = fresh_ready(owned.url)
        assert ready.status_code == 503
        models = ready.json()["models"]
        assert models["tiny-vit"]["ready"] and models["cloud-vit"]["phase"] == "ready"
        assert models["bad-vit"]["phase"] == "failed" and not models["bad-vit"]["ready"], models
        assert re.search(r"couldn't|Error", models["bad-vit"]["phase_detail"]), models
    finally:
        owned.restore()
    assert fresh_ready(owned.url).status_code == 200
