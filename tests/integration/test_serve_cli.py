"""The platform on a Ray cluster started apart (``ray start --head``), driven by the Serve CLI.

Two clusters, each with its own temp dir, ports and auth token, started the way the README says:

- in the repository root: ``serve deploy`` of the config ``deploy_app.py --render`` printed;
- in another directory (as on a node where the repository is not the current directory):
  ``serve deploy`` of the config rendered with ``--working-dir``, which ships the code as a
  ``file://`` zip in every application's runtime_env and names the model files absolutely.

Each is then checked with ``serve status`` and ``deploy_app.py status``, called over HTTP (the
router and, for vLLM, the one-hop path), and taken down with ``serve shutdown``.
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
import yaml

from common.serve_env import STREAMING_ENV, haproxy_binary_env, haproxy_files_env
from tests.conftest import ray_temp_dir
from tests.integration.conftest import (
    API_KEY,
    ROOT,
    STARTUP_TIMEOUT_S,
    _free_port,
    auth_headers,
    platform_env,
)
from tests.integration.test_openai_api import HELLO
from tests.media_files import b64, image_file, infer_body

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
        self.gcs = f"127.0.0.1:{_free_port()}"
        self.dashboard = f"http://127.0.0.1:{_free_port()}"
        # what `eval "$(python -m common.serve_env)"` sets
        self.env = {
            **platform_env(self.temp_dir),
            **STREAMING_ENV,
            **haproxy_binary_env(),
            **haproxy_files_env(int(self.gcs.split(":")[1])),  # apart from any other HAProxy here
            # Ray's token authentication, with a token of this cluster's instead of ~/.ray/auth_token.
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
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
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

    def serve_status(self, cwd: Path) -> dict:
        result = self.cli("serve", "status", "-a", self.dashboard, cwd=cwd)
        assert result.returncode == 0, result.stdout + result.stderr
        return yaml.safe_load(result.stdout)

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
        """End this cluster's processes only (never `ray stop`: it ends every Ray on the machine)."""
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


@contextlib.contextmanager
def running_cluster(cwd: Path, workdir: Path) -> Iterator[Cluster]:
    cluster = Cluster(cwd, workdir)
    try:
        cluster.wait_for_dashboard()
        yield cluster
    finally:
        cluster.stop()


def _render(
    models: list[dict], workdir: Path, *extra: str, port: int | None = None
) -> tuple[Path, int]:
    """The platform's config for ``models`` rendered to a Serve config file, and its HTTP port."""
    port = port or _free_port()
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "platform",
                "route_prefix": "/",
                "import_path": "builders.app_builder:build_app",
                "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
                "args": {"models": models, "api_keys_env": "PLATFORM_TEST_API_KEYS"},
            }
        ],
    }
    source = workdir / "model_config.yaml"
    source.write_text(yaml.safe_dump(config))
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
    return path, port


def _deploy_and_wait(cluster: Cluster, config: Path, cwd: Path) -> dict:
    deployed = cluster.cli("serve", "deploy", str(config), "-a", cluster.dashboard, cwd=cwd)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        status = cluster.cli(
            sys.executable, "deploy_app.py", "status", "--address", cluster.gcs, cwd=ROOT
        )
        if status.returncode == 0:
            assert "ready" in status.stdout, status.stdout
            break
        time.sleep(5)
    else:
        raise TimeoutError(f"not ready in {STARTUP_TIMEOUT_S}s:\n{status.stdout}{status.stderr}")
    applications = cluster.serve_status(cwd)["applications"]
    names = [app["name"] for app in yaml.safe_load(config.read_text())["applications"]]
    assert {name: app["status"] for name, app in applications.items()} == dict.fromkeys(
        names, "RUNNING"
    )
    return applications


def _classify(base: str) -> list[float]:
    answer = httpx.post(
        f"{base}/v2/models/b-vit/infer",
        json=infer_body([b64(image_file(seed=3))]),
        headers=auth_headers(),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return next(o for o in answer.json()["outputs"] if o["name"] == "scores")["data"]


def _actor_ids(base: str) -> dict[str, str]:
    answer = httpx.get(f"{base}/ready", headers=auth_headers(), timeout=30)
    assert answer.headers.get("content-type") == "application/json", (
        answer.status_code,
        answer.text[:2000],
    )
    models = answer.json()["models"]
    return {model_id: model["placement"]["actor_id"] for model_id, model in models.items()}


def _shut_down(cluster: Cluster, cwd: Path, base: str) -> None:
    result = cluster.cli("serve", "shutdown", "-y", "-a", cluster.dashboard, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.time() + 120
    while cluster.serve_status(cwd).get("applications") and time.time() < deadline:
        time.sleep(2)
    assert not cluster.serve_status(cwd).get("applications")
    try:
        answer = httpx.get(f"{base}/health", timeout=5)
    except httpx.HTTPError:
        return  # nothing listens any more
    assert answer.status_code >= 400


def test_serve_deploy_from_the_repository_root(tmp_path):
    config, port = _render([VIT], tmp_path)
    with running_cluster(ROOT, tmp_path) as cluster:
        applications = _deploy_and_wait(cluster, config, ROOT)
        assert set(applications) == {"platform", "platform.b-vit"}
        base = f"http://127.0.0.1:{port}"
        models = httpx.get(f"{base}/v1/models", headers=auth_headers(), timeout=30).json()["data"]
        assert [m["id"] for m in models] == ["b-vit"]
        assert len(_classify(base)) > 0
        _shut_down(cluster, ROOT, base)


def test_serve_deploy_elsewhere_with_the_code_shipped_as_working_dir(tmp_path):
    elsewhere = tmp_path / "elsewhere"  # neither the repository nor a parent of it
    elsewhere.mkdir()
    config, port = _render([CHAT, VIT], tmp_path, "--working-dir", str(tmp_path / "code"))
    rendered = yaml.safe_load(config.read_text())
    uris = {app["runtime_env"]["working_dir"] for app in rendered["applications"]}
    assert len(uris) == 1 and uris.pop().startswith(
        f"file://{tmp_path / 'code'}/rayserve-platform-"
    )
    with running_cluster(elsewhere, tmp_path) as cluster:
        _deploy_and_wait(cluster, config, elsewhere)
        base = f"http://127.0.0.1:{port}"
        assert len(_classify(base)) > 0
        for prefix in (
            "",
            "/models/a-chat",
        ):  # through the router, and vLLM's own server in one hop
            client = openai.OpenAI(
                base_url=f"{base}{prefix}/v1", api_key=API_KEY, max_retries=0, timeout=120
            )
            answer = client.chat.completions.create(
                model="a-chat", messages=HELLO, max_tokens=4, extra_body={"ignore_eos": True}
            )
            assert answer.usage.completion_tokens == 4
        # Rendered again, the unchanged code has the same URI: a deploy of it restarts nothing.
        before = _actor_ids(base)
        _render([CHAT, VIT], tmp_path, "--working-dir", str(tmp_path / "code"), port=port)
        assert yaml.safe_load(config.read_text()) == rendered
        again = cluster.cli("serve", "deploy", str(config), "-a", cluster.dashboard, cwd=elsewhere)
        assert again.returncode == 0, again.stderr
        time.sleep(5)
        assert _actor_ids(base) == before
        _shut_down(cluster, elsewhere, base)
