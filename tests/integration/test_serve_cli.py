"""The platform on a Ray cluster started apart (``ray start --head``), brought up on it every
documented way that targets a running cluster, one after another:

- ``serve deploy`` of the config ``deploy_app.py --render`` printed;
- ``serve deploy``, from another directory, of the config rendered with ``--working-dir``, which
  ships the code as a ``file://`` zip in every application's runtime_env and names the model
  files absolutely; deployed again unchanged, it restarts nothing;
- ``serve run`` of the file as ``model_config.yaml`` holds it (the platform as one application)
  and ``serve run`` of the rendered config, each in the background with ``--address`` and stopped
  after;
- ``deploy_app.py --config ... --address``.

Each way must show every model ready in ``deploy_app.py status``, ``/ready`` (with the replica
counts the Serve controller gives) and what the console reads (``/v1/models``, ``/ready``); each
is then taken down with ``serve shutdown`` before the next.

One cluster for all of them (a Ray start costs minutes here), started the way the README says,
in the repository root, with its own temp dir, ports and auth token. The cluster's workers can
import the platform from there too, so the ``--working-dir`` way shows that the shipped config
deploys with the code in a zip and the models named absolutely, not that the zip alone holds
every module it needs (``tests/unit/test_shipped_code.py`` checks what the zip holds).

``scripts/serve.sh`` runs ``python deploy_app.py --config ...`` on a Ray of its own (after the
install, which finds everything in place, and with Ray's usage stats off): the session platform
is started with it (``tests/integration/helpers.py``, ``running_platform``), and its status
``test_observability.py``, its ``/ready`` ``test_openai_api.py`` and its console
``test_console.py`` check.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from common.serve_env import (
    STREAMING_ENV,
    haproxy_binary_env,
    haproxy_files_env,
    new_haproxy_directory,
)
from tests.conftest import ray_temp_dir
from tests.integration.helpers import (
    ADMIN_KEY_ENTRY,
    API_KEY,
    HELLO,
    ROOT,
    STARTUP_TIMEOUT_S,
    auth_headers,
    free_port,
    platform_env,
    replica_actors,
    stop_process,
    wait_ready,
    wait_until,
)
from tests.media_files import b64, image_file, infer_body

pytestmark = pytest.mark.cluster  # a cluster of its own: the docstring says why

BIN = Path(sys.executable).parent
VIT = {
    "model_loading_config": {
        "model_id": "b-vit",
        "model_source": "./.models/tiny-vit",
        "type": "vision",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}},
    "engine_kwargs": {"task": "image-classification"},
}
CHAT = {
    "model_loading_config": {
        "model_id": "a-chat",
        "model_source": "./.models/tiny-chat",
        "type": "vllm",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.25}},
    "engine_kwargs": {
        "max_model_len": 256,
        "max_num_seqs": 8,
        "kv_cache_memory_bytes": 64 * 1024 * 1024,
        "dtype": "float32",
    },
}


class Cluster:
    """A ``ray start --head --block`` of its own, and the environment its CLI calls need."""

    def __init__(self, cwd: Path, workdir: Path):
        self.temp_dir = ray_temp_dir()
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        # what `eval "$(python -m common.serve_env)"` sets
        self.env = {
            **platform_env(self.temp_dir),
            **STREAMING_ENV,
            **haproxy_binary_env(),
            **haproxy_files_env(new_haproxy_directory()),  # apart from any other HAProxy here
            # Ray's token authentication, with this cluster's token instead of ~/.ray/auth_token.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        }
        self.log = open(workdir / "ray-start.log", "w")
        command = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.gcs.split(':')[1]}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def cli(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def serve_status(self, cwd: Path = ROOT) -> dict:
        result = self.cli("serve", "status", "-a", self.dashboard, cwd=cwd)
        assert result.returncode == 0, result.stdout + result.stderr
        return yaml.safe_load(result.stdout)

    def platform_status(self) -> subprocess.CompletedProcess:
        """``deploy_app.py status --address`` this cluster."""
        return self.cli(sys.executable, "deploy_app.py", "status", "--address", self.gcs, cwd=ROOT)

    def shut_down_serve(self, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return self.cli("serve", "shutdown", "-y", "-a", self.dashboard, cwd=cwd)

    def wait_for_dashboard(self) -> None:
        deadline = time.time() + 180
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.dashboard}/api/version", timeout=5).status_code < 500:
                    return
            assert self.process.poll() is None, Path(self.log.name).read_text()[-3000:]
            time.sleep(2)
        raise TimeoutError(
            f"the Ray dashboard did not start:\n{Path(self.log.name).read_text()[-3000:]}"
        )

    def stop(self) -> None:
        """End this cluster's processes only (never `ray stop`: it ends every Ray here)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        ours = [
            p
            for p in psutil.process_iter(["cmdline"])
            if self.temp_dir in " ".join(p.info["cmdline"] or ())
        ]
        for process in ours:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(ours, timeout=30)
        shutil.rmtree(
            Path(self.env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent, ignore_errors=True
        )
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """One cluster for the module, in the repository root, as the README starts it."""
    cluster = Cluster(ROOT, tmp_path_factory.mktemp("cluster"))
    try:
        cluster.wait_for_dashboard()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cli(cluster) -> Iterator[Cluster]:
    """The cluster, with nothing of Serve left on it after the test (whose own ``serve
    shutdown`` is asserted; this one only cleans up after a test that failed before it)."""
    yield cluster
    if cluster.serve_status().get("applications"):
        cluster.shut_down_serve()


def _config(models: list[dict], workdir: Path, port: int | None = None) -> Path:
    """The platform's config for ``models`` as ``model_config.yaml`` holds it (one application)."""
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port or free_port()},
        "applications": [
            {
                "name": "platform",
                "route_prefix": "/",
                "import_path": "builders.app_builder:build_app",
                "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
                "args": {
                    "models": models,
                    "api_keys_env": "PLATFORM_TEST_API_KEYS",
                    "api_keys": [ADMIN_KEY_ENTRY],  # replica_actors reads actor ids with it
                },
            }
        ],
    }
    source = workdir / "model_config.yaml"
    source.write_text(yaml.safe_dump(config))
    return source


def _render(
    models: list[dict], workdir: Path, *extra: str, port: int | None = None
) -> tuple[Path, int]:
    """The platform's config for ``models`` rendered to a Serve config file, and its HTTP port."""
    source = _config(models, workdir, port)
    rendered = subprocess.run(
        [sys.executable, "deploy_app.py", "--config", str(source), "--render", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rendered.returncode == 0, rendered.stderr
    path = workdir / "serve_config.yaml"
    path.write_text(rendered.stdout)
    return path, _port(path)


def _port(config: Path) -> int:
    return yaml.safe_load(config.read_text())["http_options"]["port"]


def _assert_listed(cluster: Cluster, base: str, model_ids: list[str], applications: set[str]):
    """Serve runs ``applications``; ``deploy_app.py status``, ``/ready`` and what the console
    reads name every model of ``model_ids``, ready, with its replicas."""
    serving = cluster.serve_status()["applications"]
    assert {name: app["status"] for name, app in serving.items()} == dict.fromkeys(
        applications, "RUNNING"
    )
    status = cluster.platform_status()
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {line.split()[1]: line.split()[2] for line in status.stdout.splitlines()[1:]}
    assert rows == dict.fromkeys(model_ids, "ready"), status.stdout

    def ready() -> tuple[int, dict]:
        answer = httpx.get(f"{base}/ready", headers=auth_headers(), timeout=30)
        return answer.status_code, answer.json()["models"]

    # The router reads the phases at most every 2 s: the replica counts may lag the probes.
    code, models = wait_until(
        ready,
        lambda r: all(m.get("replicas", {}).get("running") for m in r[1].values()),
        timeout_s=30,
        every_s=1,
    )
    assert code == 200 and sorted(models) == sorted(model_ids), models
    for model in models.values():
        assert model["ready"] and model["phase"] == "ready", model
        replicas = model["replicas"]
        assert (replicas["running"], replicas["target"], len(replicas["nodes"])) == (1, 1, 1), model
    # The console: its page, and the models it lists (/v1/models) with their state (/ready).
    page = httpx.get(f"{base}/console", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    cards = httpx.get(f"{base}/v1/models", headers=auth_headers(), timeout=30).json()["data"]
    assert sorted(card["id"] for card in cards) == sorted(model_ids), cards
    # whichever way it was started, the keys hold: none, or a wrong one, is a 401
    for headers in ({}, auth_headers("not-a-key-of-this-platform")):
        assert httpx.get(f"{base}/v1/models", headers=headers, timeout=30).status_code == 401


def _classify(base: str) -> list[float]:
    answer = httpx.post(
        f"{base}/v2/models/b-vit/infer",
        json=infer_body([b64(image_file(seed=3))]),
        headers=auth_headers(),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return next(o for o in answer.json()["outputs"] if o["name"] == "scores")["data"]


def _shut_down(cluster: Cluster, base: str, cwd: Path = ROOT) -> None:
    result = cluster.shut_down_serve(cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    left = wait_until(
        lambda: cluster.serve_status(cwd).get("applications"), lambda apps: not apps, 120, 2
    )
    assert not left, left
    try:
        answer = httpx.get(f"{base}/health", timeout=5)
    except httpx.HTTPError:
        return  # nothing listens any more
    assert answer.status_code >= 400


@contextlib.contextmanager
def _serve_run(cluster: Cluster, config: Path) -> Iterator[str]:
    """``serve run CONFIG --address`` the cluster, in the background; stopped (Ctrl-C, which
    shuts Serve down) on leaving. Yields the platform's URL once ``/ready`` answers 200."""
    log = config.with_suffix(".serve-run.log")
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(BIN / "serve"), "run", str(config), "--address", cluster.gcs],
            cwd=ROOT,
            env=cluster.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{_port(config)}"
    try:
        wait_ready(base, process, log)
        yield base
    finally:
        stop_process(process, signal.SIGINT)


def _applied(cluster: Cluster) -> dict[str, tuple[float, str, dict]]:
    """Each application's last deploy time, status and its deployments' replica states, as
    ``serve status`` gives them."""
    return {
        name: (
            app["last_deployed_time_s"],
            app["status"],
            {d: s.get("replica_states") or {} for d, s in app["deployments"].items()},
        )
        for name, app in cluster.serve_status()["applications"].items()
    }


def test_serve_deploy_from_the_repository_root(cli, tmp_path):
    config, port = _render([VIT], tmp_path)
    deployed = cli.cli("serve", "deploy", str(config), "-a", cli.dashboard, cwd=ROOT)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    base = f"http://127.0.0.1:{port}"
    wait_ready(base)
    _assert_listed(cli, base, ["b-vit"], {"platform", "platform.b-vit"})
    assert len(_classify(base)) > 0
    _shut_down(cli, base)


def test_serve_deploy_elsewhere_with_the_code_shipped_as_working_dir(cli, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # neither the repository nor a parent of it
    elsewhere.mkdir()
    config, port = _render([CHAT, VIT], tmp_path, "--working-dir", str(tmp_path / "code"))
    rendered = yaml.safe_load(config.read_text())
    uris = {app["runtime_env"]["working_dir"] for app in rendered["applications"]}
    assert len(uris) == 1 and uris.pop().startswith(
        f"file://{tmp_path / 'code'}/rayserve-platform-"
    )
    deployed = cli.cli("serve", "deploy", str(config), "-a", cli.dashboard, cwd=elsewhere)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    base = f"http://127.0.0.1:{port}"
    wait_ready(base)
    names = {app["name"] for app in rendered["applications"]}
    _assert_listed(cli, base, ["a-chat", "b-vit"], names)
    assert len(_classify(base)) > 0
    for prefix in ("", "/models/a-chat"):  # through the router, and vLLM's own server in one hop
        client = openai.OpenAI(
            base_url=f"{base}{prefix}/v1", api_key=API_KEY, max_retries=0, timeout=120
        )
        answer = client.chat.completions.create(
            model="a-chat", messages=HELLO, max_tokens=4, extra_body={"ignore_eos": True}
        )
        assert answer.usage.completion_tokens == 4
        # the replicas read their keys themselves here (a rendered config carries none)
        unkeyed = httpx.get(f"{base}{prefix}/v1/models", timeout=30)
        assert unkeyed.status_code == 401, (prefix, unkeyed.text)
    # Rendered again, the unchanged code has the same URI: a deploy of it restarts nothing.
    before, applied = replica_actors(base), _applied(cli)
    _render([CHAT, VIT], tmp_path, "--working-dir", str(tmp_path / "code"), port=port)
    assert yaml.safe_load(config.read_text()) == rendered
    again = cli.cli("serve", "deploy", str(config), "-a", cli.dashboard, cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    # Once the controller took the new config (each application deployed again) and has had
    # many control-loop passes to act on it, every application runs: had the deploy changed the
    # code, Serve would be rebuilding them, or their new replicas would have replaced the old.
    now = wait_until(
        lambda: _applied(cli),
        lambda apps: all(
            apps[name][0] > applied[name][0]
            and apps[name][1] == "RUNNING"
            and time.time() - apps[name][0] > 5
            for name in applied
        ),
        timeout_s=STARTUP_TIMEOUT_S,
        every_s=1,
    )
    assert set(now) == set(applied) and all(
        now[name][0] > applied[name][0] and now[name][1] == "RUNNING" for name in applied
    ), now
    starting = {name: deployments for name, (_, _, deployments) in now.items()}
    assert not [s for d in starting.values() for s in d.values() if set(s) - {"RUNNING"}], now
    assert replica_actors(base) == before
    _shut_down(cli, base, elsewhere)


def test_serve_run_of_the_file_as_one_application(cli, tmp_path):
    config = _config([VIT], tmp_path)
    with _serve_run(cli, config) as base:
        _assert_listed(cli, base, ["b-vit"], {"platform"})
        assert len(_classify(base)) > 0
    _shut_down(cli, base)


def test_serve_run_of_the_rendered_config(cli, tmp_path):
    config, _ = _render([VIT], tmp_path)
    with _serve_run(cli, config) as base:
        _assert_listed(cli, base, ["b-vit"], {"platform", "platform.b-vit"})
    _shut_down(cli, base)


def test_deploy_app_py_onto_the_cluster(cli, tmp_path):
    config = _config([VIT], tmp_path)
    deployed = cli.cli(
        sys.executable,
        "deploy_app.py",
        "--config",
        str(config),
        "--address",
        cli.gcs,
        cwd=ROOT,
        timeout=STARTUP_TIMEOUT_S,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    base = f"http://127.0.0.1:{_port(config)}"
    wait_ready(base)
    _assert_listed(cli, base, ["b-vit"], {"platform", "platform.b-vit"})
    _shut_down(cli, base)
