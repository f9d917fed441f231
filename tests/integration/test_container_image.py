"""The platform as a container image (``Dockerfile``, ``scripts/build_image.sh``), built and run
with podman: the CPU image on a local bookworm base serves the default config offline, read-only,
as a non-root user, and stops on SIGTERM; a one-line source change rebuilds only the last layer;
the image runs as KubeRay's head and worker, on a podman network, and serves across them.

Marker ``image``: the third tier of ``.ci/run``, which installs podman, runc and debootstrap and
writes ``/etc/containers/containers.conf`` (``scripts/containers.conf``). Containers of their own,
not the session platform. The build is built in a copy of the working tree (the test edits a line
there); the build, rebuild, ready and stop times are printed, not asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.audio_files import audio_file
from tests.integration.helpers import free_port, wait_until
from tests.media_files import image_file

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
ENGINE = shutil.which("podman") or shutil.which("docker")
NAME = f"rsp-test-{os.getpid()}"  # every container, network and image tag this module makes
READY_S = 900  # the whole default config on two shared cores; vLLM engines start in 20-40 s each
# vLLM's engine core takes a 160 MiB shared-memory queue; podman's and docker's default /dev/shm
# is 64 MiB (docs/operating/container.md)
SHM = "1g"
GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds: then SIGKILL, exit 137
CLUSTER_CONFIG = {
    "proxy_location": "EveryNode",
    "http_options": {"host": "127.0.0.1", "port": 8000},
    "applications": [
        {
            "name": "platform",
            "route_prefix": "/",
            "import_path": "builders.app_builder:build_app",
            "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
            "args": {
                "models": [
                    {
                        "model_loading_config": {
                            "model_id": "tiny-chat",
                            "model_source": "./.models/tiny-chat",
                            "type": "vllm",
                        },
                        "deployment_config": {"ray_actor_options": {"num_cpus": 1}},
                        "engine_kwargs": {
                            "enforce_eager": True,
                            "distributed_executor_backend": "uni",
                            "max_model_len": 512,
                            "max_num_seqs": 8,
                            "kv_cache_memory_bytes": 67108864,
                            "dtype": "float32",
                        },
                    }
                ]
            },
        }
    ],
}


def engine(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    assert ENGINE, "podman is not installed (.ci/run installs it from Debian's packages)"
    kwargs.setdefault("timeout", 1800)
    return subprocess.run([ENGINE, *args], check=check, capture_output=True, text=True, **kwargs)


def build(context: Path, tag: str) -> float:
    """Build the CPU image of ``context`` on the local bookworm base; the seconds it took."""
    start = time.monotonic()
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = subprocess.run(
        ["bash", "scripts/build_image.sh", "cpu", "--base", "local", "--tag", tag],
        cwd=context,
        env={**os.environ, "IMAGE_REVISION": revision},  # the copy built has no .git
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(result.stdout.strip().splitlines()[-1])
    return time.monotonic() - start


def layers(tag: str) -> list[str]:
    return engine("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag).stdout.split()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The working tree as git sees it (tracked files and untracked ones git does not ignore)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    copy = tmp_path_factory.mktemp("source")
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.fixture(scope="module")
def image(source) -> Iterator[str]:
    tag = f"localhost/{NAME}:cpu"
    print(f"build: {build(source, tag):.0f} s")
    size = int(engine("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    print(f"image size: {size / 1e9:.2f} GB")
    yield tag
    engine("rmi", "--force", tag, check=False)


def test_a_one_line_change_rebuilds_only_the_last_layer(image, source):
    before = layers(image)
    path = source / "deploy_app.py"
    path.write_text(path.read_text() + "# one more line\n")
    tag = f"localhost/{NAME}:rebuilt"
    try:
        print(f"rebuild after a one-line change: {build(source, tag):.0f} s")
        after = layers(tag)
    finally:
        engine("rmi", "--force", tag, check=False)
    changed = [index for index, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == [len(before) - 1], (before, after)


@contextlib.contextmanager
def container(name: str, tag: str, *args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    """A container started detached, read-only with a tmpfs /tmp; removed on leaving."""
    engine(
        "run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp", "--shm-size", SHM,
        *args, tag, *command,
    )  # fmt: skip
    try:
        yield name
    finally:
        engine("rm", "--force", "--time", "0", name, check=False)


def ready(url: str, name: str, timeout_s: float = READY_S) -> float:
    """Seconds until ``url`` answers 200; fails with the container's log if it never does."""
    start = time.monotonic()

    def status() -> int | None:
        try:
            return httpx.get(url, timeout=5).status_code
        except httpx.HTTPError:
            return None

    def running() -> str:
        return engine("inspect", "--format", "{{.State.Running}}", name).stdout.strip()

    answer = wait_until(
        status, lambda code: code == 200 or running() != "true", timeout_s=timeout_s, every_s=2
    )
    logs = engine("logs", "--tail", "60", name, check=False)
    assert answer == 200, logs.stdout + logs.stderr
    return time.monotonic() - start


@pytest.fixture(scope="module")
def served(image) -> Iterator[tuple[str, str]]:
    """The image as users run it (one command, the default config), read-only: (name, base URL)."""
    port = free_port()
    with container(f"{NAME}-serve", image, "--publish", f"127.0.0.1:{port}:8000") as name:
        base = f"http://127.0.0.1:{port}"
        print(f"time to ready: {ready(f'{base}/ready', name):.0f} s")
        yield name, base


def test_serves_chat_embeddings_and_a_transcription(served):
    _, base = served
    chat = httpx.post(
        f"{base}/v1/chat/completions",
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16,
            "temperature": 0,
        },
        timeout=120,
    )
    assert chat.status_code == 200, chat.text
    assert "Paris" in chat.json()["choices"][0]["message"]["content"]
    embedding = httpx.post(
        f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"}, timeout=60
    )
    assert embedding.status_code == 200, embedding.text
    assert len(embedding.json()["data"][0]["embedding"]) == 384
    heard = httpx.post(
        f"{base}/v1/audio/transcriptions",
        data={"model": "tiny-whisper"},
        files={"file": ("a.wav", audio_file("wav", "pcm_s16le"), "audio/wav")},
        timeout=120,
    )
    assert heard.status_code == 200, heard.text
    assert isinstance(heard.json()["text"], str)


def test_runs_as_a_non_root_user_on_a_read_only_root_with_a_health_check(served, image):
    name, _ = served
    assert engine("exec", name, "id", "-u").stdout.strip() == "1000"
    wrote = engine("exec", name, "touch", "/home/ray/platform/x", check=False)
    assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr
    assert engine("healthcheck", "run", name, check=False).returncode == 0
    labels = yaml.safe_load(
        engine("image", "inspect", "--format", "{{json .Labels}}", image).stdout
    )
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.version"] and labels["org.opencontainers.image.source"]


def test_sigterm_drains_and_exits_0_within_the_grace_period(served):
    name, _ = served
    processes = engine("top", name, "args").stdout
    assert "raylet" in processes and "haproxy" in processes, processes
    start = time.monotonic()
    engine("stop", "--time", str(GRACE_S), name)  # SIGTERM, then SIGKILL after the grace period
    print(f"stop after SIGTERM: {time.monotonic() - start:.1f} s")
    state = engine("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout
    logs = engine("logs", "--tail", "30", name, check=False)
    assert state.split() == ["exited", "0"], logs.stdout + logs.stderr


def test_the_image_runs_a_batch_job_read_only(image, tmp_path):
    """``deploy_app.py batch`` in a container of its own (after the served one stopped), as a user
    runs it: read-only, its data on a volume, the default config's tiny-vit."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for seed in range(4):
        (data / "images" / f"{seed}.png").write_bytes(image_file(seed=seed))
    data.chmod(0o777)  # the container's user (1000) writes the output there
    command = ["python", "deploy_app.py", "batch", "--model", "tiny-vit"]
    command += ["--input", "/data/images/*.png", "--output", "/data/labels.jsonl"]
    start = time.monotonic()
    result = engine(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--shm-size", SHM,
        "--volume", f"{data}:/data", image, *command, check=False, timeout=900,
    )  # fmt: skip
    print(f"batch job in the image: {time.monotonic() - start:.0f} s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (data / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and not [row for row in rows if row.get("error")], rows[:2]
    assert all(row["response"] for row in rows), rows[:2]


@pytest.fixture
def network() -> Iterator[str]:
    engine("network", "create", NAME)
    try:
        yield NAME
    finally:
        engine("network", "rm", "--force", NAME, check=False)


def test_the_image_serves_as_kuberays_head_and_worker(image, network, tmp_path):
    """Commands, environment and Serve config from the RayService that ``deploy_app.py kuberay``
    renders, with Ray's token auth: the head (0 CPUs, as rendered) holds no replica, so every
    answer crosses to the worker."""
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(CLUSTER_CONFIG))
    rendered = subprocess.run(
        [sys.executable, "deploy_app.py", "kuberay", "rayservice", "--config", str(config)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    service = yaml.safe_load(rendered)["spec"]
    cluster = service["rayClusterConfig"]
    head_spec = cluster["headGroupSpec"]
    env = [
        f"{e['name']}={e['value']}" for e in head_spec["template"]["spec"]["containers"][0]["env"]
    ]
    token = secrets.token_hex(16)  # KubeRay sets both from the Secret it makes
    env_args = [
        arg
        for pair in [*env, "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN={token}"]
        for arg in ("--env", pair)
    ]
    head_params = [f"--{k}={v}" for k, v in head_spec["rayStartParams"].items()]
    port = free_port()
    with (
        container(
            f"{NAME}-head",
            image,
            "--network",
            network,
            "--network-alias",
            "head",
            "--publish",
            f"127.0.0.1:{port}:8000",
            *env_args,
            command=("ray", "start", "--head", "--block", *head_params),
        ) as head,
        container(
            f"{NAME}-worker",
            image,
            "--network",
            network,
            *env_args,
            command=("ray", "start", "--address=head:6379", "--num-cpus=2", "--block"),
        ),
    ):
        # into the head's tmpfs /tmp, as KubeRay's operator hands serveConfigV2 to the head
        engine(
            "exec", "-i", head, "sh", "-c", "cat > /tmp/serve.yaml", input=service["serveConfigV2"]
        )
        deployed = wait_until(
            lambda: engine("exec", head, "serve", "deploy", "/tmp/serve.yaml", check=False),
            lambda result: result.returncode == 0,
            timeout_s=120,
            every_s=5,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        seconds = ready(f"http://127.0.0.1:{port}/ready", head, 600)
        print(f"cluster ready after deploy: {seconds:.0f} s")
        chat = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "tiny-chat",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            },
            timeout=120,
        )
        assert chat.status_code == 200, chat.text
