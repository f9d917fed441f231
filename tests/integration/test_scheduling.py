"""Scheduling on a three-node Ray cluster with logical GPUs: what Ray gave each replica, seen
from inside the replicas; a sharded vLLM model; scale-from-zero; a full queue answering 503;
replicas killed under load (two replicas: nothing fails; one: 503s at once until replaced).

The cluster (``ray.cluster_utils.Cluster``) has a CPU-only head, node A with one GPU and
node B with two; the engines run on the CPU, Ray's bookkeeping of GPUs is real.

A platform of its own: placement across several nodes with GPUs needs a cluster shaped for it,
and these tests kill replicas and fill queues on purpose.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster

from tests.conftest import ray_temp_dir
from tests.integration.helpers import API_KEY, ROOT, auth_headers, running_platform
from tests.media_files import b64, image_file, infer_body

pytestmark = pytest.mark.cluster  # a cluster of its own: the docstring says why


def _vit(model_id: str, actor: dict, engine_kwargs: dict | None = None, **deployment) -> dict:
    return {
        "model_loading_config": {
            "model_id": model_id,
            "model_source": "./.models/tiny-vit",
            "type": "vision",
        },
        "deployment_config": {"ray_actor_options": actor, **deployment},
        "engine_kwargs": {"task": "image-classification", **(engine_kwargs or {})},
    }


ON_NODE_A_HALF_GPU = {"num_cpus": 0.1, "num_gpus": 0.5, "resources": {"node-a": 0.1}}
MODELS = [
    _vit("share-a", ON_NODE_A_HALF_GPU),
    _vit("share-b", ON_NODE_A_HALF_GPU),
    {
        "model_loading_config": {
            "model_id": "sharded-chat",
            "model_source": "./.models/tiny-chat",
            "type": "vllm",
        },
        "deployment_config": {"ray_actor_options": {"num_cpus": 0.5}},
        "engine_kwargs": {
            "tensor_parallel_size": 2,
            "max_model_len": 256,
            "max_num_seqs": 8,
            "dtype": "float32",
            "kv_cache_memory_bytes": 64 * 1024 * 1024,
        },
    },
    _vit(
        "cold-start",
        {"num_cpus": 0.1},
        autoscaling_config={
            "min_replicas": 0,
            "max_replicas": 1,
            "initial_replicas": 0,
            "upscale_delay_s": 0,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    ),
    # One request at a time, one waiting; a lone request waits 10 s for company in its batch: the
    # window in which a burst must arrive to find the replica full (on a loaded 2-core machine
    # twenty requests through HAProxy and the router took more than 2 s to arrive, and once a
    # third was admitted after the first answer at 5 s).
    _vit(
        "one-at-a-time",
        {"num_cpus": 0.1},
        {"max_batch_size": 4, "batch_wait_timeout_s": 10},
        max_ongoing_requests=1,
        max_queued_requests=1,
    ),
    _vit("twin", {"num_cpus": 0.1}, num_replicas=2),
    _vit("lone", {"num_cpus": 0.1}),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The keys are read where the platform serves: this cluster's nodes inherit this environment.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PLATFORM_TEST_API_KEYS", API_KEY)
        yield from _cluster()


def _cluster():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "temp_dir": ray_temp_dir()},
    )
    nodes = {
        "head": cluster.head_node,
        "a": cluster.add_node(num_cpus=2, num_gpus=1, resources={"node-a": 1}),
        "b": cluster.add_node(num_cpus=2, num_gpus=2, resources={"node-b": 1}),
    }
    cluster.wait_for_nodes()
    try:
        yield cluster, {name: node.node_id for name, node in nodes.items()}
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def scheduled(cluster, tmp_path_factory):
    """(base URL, node ids by name) of the platform running on the cluster."""
    ray_cluster, node_ids = cluster
    config = {
        "proxy_location": "HeadOnly",
        "applications": [
            {
                "name": "platform",
                "route_prefix": "/",
                "import_path": "builders.app_builder:build_app",
                "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
                "args": {"models": MODELS, "api_keys_env": "PLATFORM_TEST_API_KEYS"},
            }
        ],
    }
    with running_platform(
        config, tmp_path_factory.mktemp("scheduled"), ray_cluster.address
    ) as base:
        ray.init(address=ray_cluster.address, namespace="serve")
        try:
            yield base, node_ids
        finally:
            ray.shutdown()


def _replica_stats(base: str) -> dict:
    return httpx.get(f"{base}/ready", headers=auth_headers(), timeout=30).json()["models"]


def _infer(client: httpx.Client | httpx.AsyncClient, model: str):
    return client.post(f"/v2/models/{model}/infer", json=infer_body([b64(image_file())]))


def test_two_half_gpu_replicas_share_one_gpu_of_their_node(scheduled):
    base, nodes = scheduled
    stats = _replica_stats(base)
    a, b = stats["share-a"]["placement"], stats["share-b"]["placement"]
    assert a["node_id"] == b["node_id"] == nodes["a"]
    assert len(a["gpu_ids"]) == 1 and a["gpu_ids"] == b["gpu_ids"]
    assert a["gpu_share"] == b["gpu_share"] == 0.5  # what /ready and the console show


def test_a_tensor_parallel_model_holds_one_gpu_bundle_per_shard_on_one_node(scheduled):
    base, nodes = scheduled
    stats = _replica_stats(base)["sharded-chat"]
    group = stats["placement"]["placement_group"]
    assert group["strategy"] == "STRICT_PACK"
    assert [bundle.get("GPU") for bundle in group["bundles"]] == [1, 1]
    assert group["bundle_nodes"] == [nodes["b"], nodes["b"]]  # the only node with two GPUs
    assert stats["placement"]["gpu_ids"] == []  # vLLM's shards hold the GPUs, not the replica
    assert stats["tensor_parallel_size"] == 2

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model="sharded-chat", max_tokens=5, messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.usage.completion_tokens >= 1 and answer.model == "sharded-chat"


def test_a_model_scaled_to_zero_answers_its_first_request(scheduled):
    base, _ = scheduled
    status = serve.status().applications["platform.cold-start"].deployments["cold-start"]
    assert status.replica_states.get("RUNNING", 0) == 0
    cold = _replica_stats(base)["cold-start"]
    assert cold["ready"] and cold["scales_from_zero"] and cold["phase"] == "ready", cold
    assert (
        cold["replicas"] == {"running": 0, "target": 0, "nodes": []}
        and "scaled to zero" in cold["phase_detail"]
    )
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=300) as client:
        response = _infer(client, "cold-start")
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["name"] == "labels"
    status = serve.status().applications["platform.cold-start"].deployments["cold-start"]
    assert status.replica_states.get("RUNNING", 0) == 1


def test_a_full_queue_answers_503_with_retry_after_at_once(scheduled):
    """A burst of 10x the model's capacity (one running, one queued)."""
    base, _ = scheduled
    finished: list[tuple[httpx.Response, float]] = []

    async def one(client):
        start = time.perf_counter()
        response = await _infer(client, "one-at-a-time")
        finished.append((response, time.perf_counter() - start))

    async def burst():
        async with httpx.AsyncClient(base_url=base, headers=auth_headers(), timeout=120) as client:
            await asyncio.gather(*(one(client) for _ in range(20)))

    asyncio.run(burst())
    statuses = [r.status_code for r, _ in finished]
    timeline = [(r.status_code, round(elapsed, 2)) for r, elapsed in finished]
    assert set(statuses) == {200, 503} and statuses.count(200) <= 2, timeline
    refused = [(r, elapsed) for r, elapsed in finished if r.status_code == 503]
    assert all(
        r.headers.get("retry-after") and "at capacity" in r.json()["error"] for r, _ in refused
    )
    # Refusals do not wait for the running request: all of them come back before any answer.
    assert statuses.index(200) == len(refused)
    waits_ms = sorted(elapsed * 1000 for _, elapsed in refused)
    print(
        f"burst of 20 at capacity 2: {len(refused)} refused, "
        f"503 after {waits_ms[len(waits_ms) // 2]:.0f} ms "
        f"(p50), {waits_ms[-1]:.0f} ms (max)"
    )
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as client:
        assert _infer(client, "one-at-a-time").status_code == 200


def test_ready_does_not_queue_behind_a_busy_model(scheduled):
    base, _ = scheduled

    async def busy_then_ready():
        async with httpx.AsyncClient(base_url=base, headers=auth_headers(), timeout=120) as client:
            # One request runs and one waits, for ~20 s: the third is refused once both are
            # taken, so its 503 says the replica and its queue are full.
            work = [asyncio.create_task(_infer(client, "one-at-a-time")) for _ in range(3)]
            deadline = time.monotonic() + 60
            while not any(task.done() for task in work) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            refused = [task.result().status_code for task in work if task.done()]
            admitted = [task for task in work if not task.done()]
            ready = await client.get("/ready")
            await asyncio.gather(*work)
            return refused, ready, [task.result().status_code for task in admitted]

    refused, ready, admitted = asyncio.run(busy_then_ready())
    # Asked while the model was full. (Serve may refuse the second of two requests that arrive
    # together: it counts one still being assigned as queued.)
    assert refused and set(refused) == {503}, refused
    assert ready.status_code == 200, ready.text
    model = ready.json()["models"]["one-at-a-time"]
    assert model["ready"] is True and model["deployment_status"] == "HEALTHY"
    # /ready took no place of a user's: every request admitted before it was answered
    assert admitted and set(admitted) == {200}, admitted


def test_a_model_wider_than_any_node_is_refused_before_deploying(scheduled, cluster, tmp_path):
    ray_cluster, _ = cluster
    wide = {
        **MODELS[2],
        "model_loading_config": {**MODELS[2]["model_loading_config"], "model_id": "too-wide"},
        "engine_kwargs": {**MODELS[2]["engine_kwargs"], "tensor_parallel_size": 4},
    }
    config = {
        "applications": [
            {
                "name": "too-wide",
                "route_prefix": "/wide",
                "import_path": "builders.app_builder:build_app",
                "args": {"models": [wide]},
            }
        ]
    }
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "deploy_app.py", "--config", str(path), "--address", ray_cluster.address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert (
        "too-wide replica 1 (4 GPU" in result.stderr
        and "needs 4 GPUs on one node; nodes have 2" in result.stderr
    )
    assert "too-wide" not in serve.status().applications  # nothing was deployed


def _replica_pids(model: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(
        filters=[
            ("class_name", "=", f"ServeReplica:platform.{model}:{model}"),
            ("state", "=", "ALIVE"),
        ]
    )
    return [actor.pid for actor in actors]


def test_with_two_replicas_one_killed_every_request_after_the_kill_succeeds(scheduled):
    base, _ = scheduled
    pids = _replica_pids("twin")
    assert len(pids) == 2
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as client:
        assert _infer(client, "twin").status_code == 200
        os.kill(pids[0], signal.SIGKILL)
        statuses = [_infer(client, "twin").status_code for _ in range(20)]
    assert (
        statuses == [200] * 20
    )  # one lands on the dead replica at most, and is retried on the other


def test_with_one_replica_killed_requests_get_503_at_once_until_it_is_replaced(scheduled):
    """Refused, not held in Serve's queue until the replacement starts; no operator action."""
    base, _ = scheduled
    [pid] = _replica_pids("lone")
    answers: list[tuple[int, str | None]] = []
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=30) as client:
        assert _infer(client, "lone").status_code == 200
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 300 and (not answers or answers[-1][0] != 200):
            response = _infer(client, "lone")
            answers.append((response.status_code, response.headers.get("retry-after")))
            if response.status_code == 503:
                assert "replica" in response.json()["error"], response.text
                time.sleep(0.2)
    recovery_s = time.monotonic() - killed_at
    print(
        f"lone: replaced and answering {recovery_s:.1f} s after the kill; "
        f"{len(answers) - 1} refusals before"
    )
    assert answers[-1][0] == 200
    assert {status for status, _ in answers[:-1]} == {503} and all(
        retry for _, retry in answers[:-1]
    )
    assert len(answers) > 1  # the replacement was not instant: requests in between were refused
    assert _replica_pids("lone") not in ([], [pid])
