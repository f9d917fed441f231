"""What the integration tests share: the session platform's keys and models, starting and editing a
platform, free ports, and waiting for a condition with a deadline."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import yaml

from common.serve_env import haproxy_processes
from tests.conftest import ray_temp_dir
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-for-every-model"
SCOPED_KEY = "test-key-embeddings-only"  # the session platform's key for its embedding model alone
ADAPTER_KEY = "test-key-one-chat-adapter"  # and its key for one LoRA adapter of tiny-chat alone
LIMITED_KEY = "test-key-three-a-minute"  # the session platform's key with requests_per_minute: 3
TOKEN_KEY = "test-key-sixty-tokens"  # and its key with tokens_per_minute: 60
BURST_KEY = "test-key-twenty-a-minute"  # and one with requests_per_minute: 20, for a burst
RESERVE_KEY = "test-key-reserves-sixty"  # and one more of tokens_per_minute: 60, for reservations
PIPELINE_TOKENS_KEY = "test-key-pipelines-hundred"  # tokens_per_minute: 100, for pipeline steps
ADMIN_KEY = "test-key-admin-sees-pids"  # the one that sees /ready's process and actor ids
ADMIN_KEY_ENTRY = {"name": "admin", "key_env": "PLATFORM_TEST_ADMIN_KEY", "admin": True}
ALLOWED_ORIGIN = "https://app.example"
IMAGE_HOST = "127.0.0.2"  # a loopback address the session's media policy allows
STARTUP_TIMEOUT_S = 900
APPLYING = "applying "  # deploy_app.py's line as it sends a config to Serve
HELLO = [{"role": "user", "content": "Hello! Tell me a story."}]

T = TypeVar("T")


def wait_until(
    read: Callable[[], T],
    done: Callable[[T], bool],
    timeout_s: float = 30,
    every_s: float = 0.2,
) -> T:
    """Poll ``read()`` until ``done(value)`` or the deadline; the last value, for the assertion
    that follows (which fails when the deadline passed first)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(every_s)
        value = read()
    return value


def replica_actors(base: str) -> dict[str, str]:
    """The actor of each model's replica, for the models served by one replica: a restart
    replaces it. (``/ready`` shows the replica that answered its stats: of a model with two,
    either one, so those are left out.)"""
    ready = fresh_ready(base, ADMIN_KEY)
    return {
        model: state["placement"]["actor_id"]
        for model, state in ready.json()["models"].items()
        if "placement" in state and state.get("replicas", {}).get("target") == 1
    }


def fresh_ready(base: str | httpx.URL, key: str = API_KEY, timeout_s: float = 60) -> httpx.Response:
    """``/ready`` as it answers once its state was read after this call: it shows what happened
    before the call. 200 or 503, whichever the state says.

    On this machine the state's ``as_of`` (when its read began) is compared with the clock here;
    a platform elsewhere (``PLATFORM_URL``) has a clock of its own, so there the third state seen
    is the first whose read surely began after this call (the router reads one after another)."""
    since, base = time.time(), str(base).rstrip("/")
    local = urlsplit(base).hostname in ("127.0.0.1", "localhost", "::1")
    seen: set[float] = set()

    def read() -> httpx.Response | None:
        answer = httpx.get(f"{base}/ready", headers=auth_headers(key), timeout=30)
        if answer.headers.get("content-type") != "application/json":
            return None  # not the router's answer yet (a proxy's while it starts)
        return answer

    def caught_up(answer: httpx.Response | None) -> bool:
        as_of = None if answer is None else answer.json().get("as_of")
        if as_of is None:
            return False
        seen.add(as_of)
        return as_of >= since if local else len(seen) >= 3

    ready = wait_until(read, caught_up, timeout_s)
    assert ready is not None and caught_up(ready), f"/ready not caught up in {timeout_s} s"
    return ready


def auth_headers(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def platform_env(ray_tmpdir: str | None = None) -> dict[str, str]:
    """The environment of a platform under test: its own Ray temp dir, HAProxy's metrics and stats
    ports free (Ray's defaults are fixed ports on every interface), and its own range of replica
    ports and fallback proxy ports: Serve binds them with SO_REUSEPORT, so two platforms sharing
    one could answer each other's requests."""
    replica_ports = free_port()
    for _ in range(199):  # the 200 ports after it are this platform's replica ports
        free_port()
    return {
        **os.environ,
        "PLATFORM_TEST_API_KEYS": API_KEY,
        "PLATFORM_TEST_LIMITED_KEY": LIMITED_KEY,
        "PLATFORM_TEST_TOKEN_KEY": TOKEN_KEY,
        "PLATFORM_TEST_BURST_KEY": BURST_KEY,
        "PLATFORM_TEST_RESERVE_KEY": RESERVE_KEY,
        "PLATFORM_TEST_PIPELINE_TOKENS_KEY": PIPELINE_TOKENS_KEY,
        "PLATFORM_TEST_ADMIN_KEY": ADMIN_KEY,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmpdir or ray_temp_dir(),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(replica_ports),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(replica_ports + 99),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(replica_ports + 100),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(replica_ports + 199),
        # A removed or replaced replica stays open this long for load balancers to let it go
        # (30 s by default, for a cloud balancer); Serve's HAProxy on this node lets it go within
        # a second. Each edit that removes a model would otherwise wait the 30 s.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    }


def deploy_command(config_path: Path, address: str | None = None, *extra: str) -> list[str]:
    address_args = ["--address", address] if address else []
    return [sys.executable, "deploy_app.py", "--config", str(config_path), *address_args, *extra]


def leftover_haproxy(http_port: int) -> list[str]:
    """The command lines of the HAProxy processes still running on the platform's files."""
    return [" ".join(process.info["cmdline"]) for process in haproxy_processes(http_port)]


@dataclass
class Platform:
    """A running platform: its URL and, when this session started it, what reaches its Ray."""

    url: str
    env: dict[str, str] | None = None  # `deploy_app.py --address auto` finds its Ray through it
    config_path: Path | None = None  # the config it runs, which edits rewrite
    metrics_url: str | None = None
    config: dict = field(default_factory=dict)
    edited: bool = False  # since the session config was last applied; a test that edits the
    # platform by other means than ``apply`` (``--watch``) sets it

    @property
    def owned(self) -> bool:
        return self.env is not None

    def require_owned(self) -> Platform:
        """Skip a test that needs the platform's Ray, files or logs when it runs elsewhere."""
        if not self.owned:
            pytest.skip("needs the platform this session starts: unset PLATFORM_URL to run it")
        return self

    @property
    def ray_tmpdir(self) -> Path:
        assert self.env is not None
        return Path(self.env["RAY_TMPDIR"])

    def apply(self, config: dict, **env: str) -> subprocess.CompletedProcess:
        """``deploy_app.py --address auto`` of ``config`` written over the platform's file, as an
        operator edits a running platform; returns once every model is live (or one failed).
        ``env``: variables the command runs with beyond the platform's (keys to rotate)."""
        assert self.config_path is not None and self.env is not None
        self.config_path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            deploy_command(self.config_path, "auto"),
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
        )
        # an apply refused before it deployed (a bad file) changed nothing
        self.edited |= config != self.config and APPLYING in result.stdout
        return result

    def restore(self) -> None:
        """Apply the session's own config again, if a test edited it: what an edit added goes,
        what it changed returns."""
        if not self.edited:
            return
        result = self.apply(self.config)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        self.edited = False


@contextlib.contextmanager
def running_platform(
    config: dict,
    workdir: Path,
    address: str | None = None,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    abort: threading.Event | None = None,
) -> Iterator[str]:
    """Serve ``config`` (written to ``workdir/config.yaml``): with ``scripts/serve.sh``, as the
    README starts the platform (``deploy_app.py`` on a Ray of its own, serving until the end), or
    applied with ``deploy_app.py --address`` to the cluster at ``address`` (the command returns
    once live; the cluster keeps serving). ``abort``: stops waiting for it to be ready. Should
    this process end without stopping it (a thread of it killed), its exit kills the platform's
    whole process group."""
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = path.with_name("platform.log")
    with open(log_path, "w") as log:
        command = (
            ["bash", "scripts/serve.sh", str(path), *extra_args]
            if address is None
            else deploy_command(path, address, *extra_args)
        )
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or platform_env(),
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        left_running = functools.partial(_kill_group_if_running, proc)
        atexit.register(left_running)
        try:
            if address is not None and proc.wait(STARTUP_TIMEOUT_S) != 0:
                raise RuntimeError(f"deploy_app.py failed:\n{log_path.read_text()[-4000:]}")
            wait_ready(base, proc if address is None else None, log_path, abort)
            yield base
        finally:
            atexit.unregister(left_running)
            stop_process(proc, signal.SIGTERM)
            if address is None:  # the platform stopped its own Ray: nothing of it may outlive it
                left = leftover_haproxy(port)
                assert not left, left


def _kill_group_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def stop_process(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to a process serving a platform; its whole session is killed if it has not
    ended 90 s later."""
    process.send_signal(sig)
    try:
        process.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def wait_ready(
    base: str,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
    abort: threading.Event | None = None,
) -> None:
    """Until ``/ready`` answers 200; fails when ``proc``, serving the platform, exits first
    (with the end of its log at ``log_path``), or once ``abort`` is set (the run is stopping)."""

    def log_tail() -> str:
        return log_path.read_text()[-4000:] if log_path else ""

    def status() -> int | None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"platform exited ({proc.returncode}):\n{log_tail()}")
        if abort is not None and abort.is_set():
            raise RuntimeError("stopped before the platform was ready")
        try:
            return httpx.get(f"{base}/ready", headers=auth_headers(), timeout=10).status_code
        except httpx.HTTPError:
            return None

    if wait_until(status, lambda code: code == 200, STARTUP_TIMEOUT_S, every_s=2) != 200:
        raise TimeoutError(f"platform not ready in {STARTUP_TIMEOUT_S}s:\n{log_tail()}")


def engine_stats(base: str, model: str) -> dict:
    """What ``/ready`` says of one model's engine (requests running, aborted, its placement)."""
    return fresh_ready(base, ADMIN_KEY).json()["models"][model]


REPLICA_COUNTERS = """
import json, sys, ray
from ray import serve
ray.init(address="auto", namespace="serve", log_to_driver=False, logging_level="ERROR")
handle = serve.get_deployment_handle(sys.argv[1], "platform." + sys.argv[1])
replicas = int(sys.argv[2])
seen = {}
for _ in range(20 * replicas):  # each call reaches one replica: until every one has answered
    stats = handle.stats.remote().result()
    seen[stats["placement"]["actor_id"]] = {
        "variants": stats.get("variants_loaded", []), "requests": stats["requests_total"]}
    if len(seen) == replicas:
        break
print(json.dumps(seen))
"""


def on_session_ray(env: dict[str, str], code: str, *args: str):
    """What a Python script (``code``, with ``args``) run as a driver of the session's Ray prints
    as JSON on its last line."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def replica_counters(env: dict[str, str], model: str, replicas: int = 2) -> dict[str, dict]:
    """Each replica's own counters of a lone model's deployment (its loaded variants and the
    requests it took), by actor id, read through a Serve handle on the session's Ray."""
    seen = on_session_ray(env, REPLICA_COUNTERS, model, str(replicas))
    assert len(seen) == replicas, seen
    return seen


def requests_served(before: dict[str, dict], after: dict[str, dict]) -> dict[str, int]:
    """Requests each replica took between two ``replica_counters``."""
    return {replica: after[replica]["requests"] - before[replica]["requests"] for replica in after}


def assert_leaving_a_stream_stops_it(
    url: str,
    model: str,
    read_stats,
    counter: str,
    pause_s: float = 0,
    attempts: int = 3,
) -> dict:
    """Open a long stream at ``url``, read its first line, stop reading for ``pause_s`` (the buffers
    on the way fill up), then leave; assert that the engine counts the stop in ``counter`` and has
    nothing left running. The last stats.

    An attempt shows something only if the engine was still generating when the client left: on a
    busy 2-core machine a stream's first line can come seconds late, after the engine generated all
    of it. Such an attempt is made again; a stop never counted fails all the same. ``read_stats``
    reads the engine's stats as of its call (``engine_stats``)."""
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
        before = read_stats()  # the counters as the attempt before left them
        with (
            httpx.Client(headers=auth_headers(), timeout=60) as c,
            c.stream("POST", url, json=body) as response,
        ):
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection
            first = next(lines)
            assert response.status_code == 200, first
            assert first.startswith("data: {") and '"error"' not in first, first
            time.sleep(pause_s)  # the client stops reading: the pause is the behaviour under test
            generating = read_stats()["unfinished_requests"] > 0
        if generating:
            stats = wait_until(
                read_stats,
                lambda s, before=before: (
                    s[counter] > before[counter] and s["unfinished_requests"] == 0
                ),
            )
            assert stats[counter] == before[counter] + 1, (before, stats)
            assert stats["unfinished_requests"] == 0, (before, stats)
            return stats
    raise AssertionError(
        f"in {attempts} attempts the engine finished the stream before the client left"
    )


def assert_still_serving(client: openai.OpenAI, model: str = "tiny-chat") -> None:
    reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=4)
    assert reply.choices[0].finish_reason in ("length", "stop")
