"""The platform on a real multi-node Ray cluster on this machine (``scripts/local_cluster.sh``): one
network namespace per node, each with its own address, ports and HAProxy on :8000, Ray's token auth
on. The cluster comes up once for the module (a head with 1 CPU, two workers with 5) and goes down
at its end, with nothing left behind (namespaces, bridge, processes, files).

A cluster of its own: nodes are killed here on purpose. Root only (``ip netns``).

What it measures is printed (``-rA`` shows it): placement predicted vs made, the requests around
each kill, the time until the model is back at full strength, what a head outage interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import yaml

from tests.integration.helpers import (
    ADMIN_KEY,
    ADMIN_KEY_ENTRY,
    API_KEY,
    ROOT,
    auth_headers,
    wait_until,
)
from tests.integration.postgres_server import ledger_url, running_postgres
from tests.media_files import b64, image_file, infer_body

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

SCRIPT = ROOT / "scripts" / "local_cluster.sh"
STATE = Path("/tmp/rsp-lc")  # the script's default state directory
PREFIX = "rsplc-"  # of the namespaces and links it makes
TWIN = "twin-chat"  # two replicas, each too large to share a worker with the other
INGRESS = "ingress"  # the custom resource of the nodes that may run a router: the head, worker 1
ENGINE = {
    "max_model_len": 256,
    "max_num_seqs": 8,
    "dtype": "float32",
    "kv_cache_memory_bytes": 64 * 1024 * 1024,
}


def _model(model_id: str, source: str, type_: str, actor: dict, engine: dict, **deployment):
    return {
        "model_loading_config": {"model_id": model_id, "model_source": source, "type": type_},
        "deployment_config": {"ray_actor_options": actor, **deployment},
        "engine_kwargs": engine,
    }


TWIN_MODEL = _model(TWIN, "./.models/tiny-chat", "vllm", {"num_cpus": 3}, ENGINE, num_replicas=2)
VIT = _model(
    "tiny-vit", "./.models/tiny-vit", "vision", {"num_cpus": 0.25}, {"task": "image-classification"}
)


def _config(*models: dict, usage: str | None = None) -> dict:
    """The module's application of ``models``, its usage ledger on the database at ``usage``."""
    return {
        "applications": [
            {
                "name": "platform",
                "route_prefix": "/",
                "import_path": "builders.app_builder:build_app",
                "args": {
                    "models": list(models),
                    "api_keys_env": "PLATFORM_TEST_API_KEYS",
                    "api_keys": [ADMIN_KEY_ENTRY],  # sees /ready's replica nodes
                    # Two routers on two nodes, as a cluster that may lose a node runs them:
                    # /v1 survives the loss of any one node, the head included (without the
                    # limit Ray put both on the head at times: /v1 was down with it). Only the
                    # head and worker 1 offer the "ingress" resource: worker 2, which the worker
                    # test kills, runs no router, so every /v1 stream it carried must end with
                    # the error event.
                    "router": {
                        "num_replicas": 2,
                        "max_replicas_per_node": 1,
                        "ray_actor_options": {"num_cpus": 0, "resources": {INGRESS: 1}},
                    },
                }
                | ({"usage": {"database": usage}} if usage else {}),
            }
        ]
    }


@dataclass
class LocalCluster:
    nodes: dict[int, str]  # index: address
    env: dict[str, str]
    workdir: Path
    redis: bool
    log: list[str] = field(default_factory=list)
    host: str = ""  # this machine on the cluster's bridge
    ledger: str | None = None  # the usage database every router and replica writes

    def run(self, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def url(self, node: int) -> str:
        return f"http://{self.nodes[node]}:8000"

    def deploy(self, config: dict, from_node: int = 0) -> None:
        """``config`` applied by a driver on node ``from_node`` (the head by default)."""
        path = self.workdir / "cluster.yaml"
        path.write_text(yaml.safe_dump(config))
        result = self.run("deploy", str(path), LOCAL_CLUSTER_DRIVER_NODE=str(from_node))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def state(self, expression: str) -> list:
        """``expression`` evaluated on the head with Ray's state API at hand (``actors(**filters)``,
        ``nodes(**filters)``, ``ips``: the node ids' addresses), as JSON."""
        code = STATE_PRELUDE + f"print(json.dumps({expression}))"
        result = self.run("exec", str(ROOT / ".venv" / "bin" / "python"), "-c", code, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def replica_nodes(self, deployment: str, app: str = "") -> list[str]:
        """The addresses of the nodes running ``deployment``'s replicas (of application ``app``,
        by default the model's own), as Ray reports them."""
        alive = _alive_replicas(deployment, app)
        return sorted(self.state(f"[ips[a.node_id] for a in {alive}]"))

    def replica_actors(self, model: str) -> list[str]:
        """The actor ids of ``model``'s live replicas."""
        return sorted(self.state(f"[a.actor_id for a in {_alive_replicas(model)}]"))


def _alive_replicas(deployment: str, app: str = "") -> str:
    cls = f"ServeReplica:{app or f'platform.{deployment}'}:{deployment}"
    return f"actors(class_name={cls!r}, state='ALIVE')"


# The state API from the head (a node or an actor being lost, its lists can be short of the
# total it counts: what is there is what is wanted).
STATE_PRELUDE = """import json, os
from ray.util.state import list_actors, list_jobs, list_nodes
where = dict(address=os.environ["RAY_API_SERVER_ADDRESS"], raise_on_missing_output=False)
def nodes(**f): return list_nodes(filters=[(k, "=", v) for k, v in f.items()], **where)
def actors(**f): return list_actors(filters=[(k, "=", v) for k, v in f.items()], **where)
def jobs(): return list_jobs(**where)
ips = {n.node_id: n.node_ip for n in nodes()}
"""


def leftovers() -> list[str]:
    """What a cluster of the script's could leave: namespaces, links, files, processes."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    left = [line for line in (namespaces + links).splitlines() if line.startswith(PREFIX)]
    left += [str(STATE)] if STATE.exists() else []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(STATE) in arg for arg in process.info["cmdline"] or ()):
            left.append(f"pid {process.pid}: {' '.join(process.info['cmdline'])[:200]}")
    return left


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    assert not leftovers(), leftovers()  # a cluster someone left: down it first
    redis = shutil.which("redis-server") is not None
    env = {
        **os.environ,
        "PLATFORM_TEST_API_KEYS": API_KEY,
        "PLATFORM_TEST_ADMIN_KEY": ADMIN_KEY,
        "LOCAL_CLUSTER_HEAD_CPUS": "1",
        "LOCAL_CLUSTER_WORKER_CPUS": "5",
        **{f"LOCAL_CLUSTER_RESOURCES_{node}": json.dumps({INGRESS: 1}) for node in (0, 1)},
    }
    local = LocalCluster({}, env, tmp_path_factory.mktemp("local-cluster"), redis)
    try:
        up = local.run("up", "3", *(["--redis"] if redis else []))
        assert up.returncode == 0, up.stdout + up.stderr[-3000:]
        for line in up.stdout.splitlines():
            if match := re.fullmatch(r"node (\d+) (\S+)", line):
                local.nodes[int(match[1])] = match[2]
            elif match := re.fullmatch(r"host (\S+)", line):
                local.host = match[1]
        assert sorted(local.nodes) == [0, 1, 2] and local.host, up.stdout
        # The usage ledger on a PostgreSQL outside the cluster, as a cluster's would be: on this
        # machine's bridge address, open to the nodes' subnet only.
        with running_postgres((local.host,), trusted_subnet=f"{local.host}/24") as port:
            local.ledger = ledger_url(local.host, port)
            yield local
    finally:
        down = local.run("down", timeout=120)
        assert down.returncode == 0, down.stderr
        assert not leftovers(), leftovers()
        print("\n".join(["", "local cluster:", *local.log]))


@pytest.fixture(scope="module")
def deployed(cluster):
    cluster.deploy(_config(TWIN_MODEL, usage=cluster.ledger))
    return cluster


def _chat(client: httpx.Client, url: str, **body) -> httpx.Response:
    return client.post(
        url,
        json={"model": TWIN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        | body,
    )


# The head's outage: the workers' raylets wait up to RAY_gcs_rpc_server_reconnect_timeout_s for it
# (scripts/local_cluster.sh sets 600 s); a KubeRay head pod restarts in tens of seconds.
HEAD_DOWN_S = 20
SHARED = "/v1/chat/completions"
ONE_HOP = f"/models/{TWIN}/v1/chat/completions"


def test_every_nodes_proxy_serves_both_paths(deployed):
    with httpx.Client(headers=auth_headers(), timeout=120) as client:
        for node in deployed.nodes:
            for path in (SHARED, ONE_HOP):
                answer = _chat(client, deployed.url(node) + path)
                assert answer.status_code == 200, (node, path, answer.text)
        ready = client.get(deployed.url(1) + "/ready").json()["models"][TWIN]
    replicas = ready["replicas"]
    assert (replicas["running"], replicas["target"], len(replicas["nodes"])) == (2, 2, 2), ready
    assert ready["placement"]["node_id"], ready  # the node of the replica that answered


def test_ray_placed_the_replicas_where_the_plan_said(deployed):
    # The operator's command, on the workers alone (the head's 1 CPU fits no twin-chat replica)
    config = deployed.workdir / "plan.yaml"
    config.write_text(yaml.safe_dump(_config(TWIN_MODEL, usage=deployed.ledger)))
    printed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "deploy_app.py", "--config", str(config)]
        + ["--plan", "--nodes", "2", "--cpus-per-node", "5", "--gpus-per-node", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    # its table's rows: node, gpus, deployment, replica, cpus
    rows = [line.split() for line in printed.splitlines()]
    twin_nodes = {row[0] for row in rows if len(row) == 5 and row[2] == TWIN}
    made = deployed.replica_nodes(TWIN)
    deployed.log.append(
        f"placement of {TWIN}: predicted nodes {sorted(twin_nodes)} of 2 workers, "
        f"made {made} ({deployed.nodes[1]}, {deployed.nodes[2]} are the workers)"
    )
    assert len(twin_nodes) == 2 and made == sorted([deployed.nodes[1], deployed.nodes[2]])
    routers = deployed.replica_nodes("MultiModelRouter", app="platform")
    assert routers == [deployed.nodes[0], deployed.nodes[1]], routers  # where "ingress" is
    # What the operator's status shows (each running replica's node), and /ready from a worker
    status = deployed.run(
        "exec", str(ROOT / ".venv" / "bin" / "python"), "deploy_app.py", "status",
        "--address", f"{deployed.nodes[0]}:6379", timeout=120,
    )  # fmt: skip
    (line,) = [row for row in status.stdout.splitlines() if TWIN in row.split()]
    assert ",".join(made) in line.split(), status.stdout + status.stderr[-2000:]
    with httpx.Client(headers=auth_headers(ADMIN_KEY), timeout=60) as client:
        ready = client.get(deployed.url(1) + "/ready").json()["models"][TWIN]["replicas"]
    assert ready["running"] == 2 and sorted(ready["nodes"]) == made, ready  # admins see them


def _chat_as(client: httpx.Client, url: str, key: str) -> httpx.Response:
    """A chat with ``key``, retried while the key is not yet known where it lands (a key made on
    one node reaches every router and replica within the key store's refresh)."""
    body = {"model": TWIN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return wait_until(
        lambda: client.post(url, json=body, headers={"Authorization": f"Bearer {key}"}),
        lambda answer: answer.status_code != 401,
        timeout_s=10,
    )


def test_every_router_and_replica_writes_one_ledger_on_postgresql(deployed):
    """``usage.database`` on a PostgreSQL outside the cluster: a key made through worker 1's admin
    API serves through every node's proxy on both paths, and the ledger, read through worker 2,
    holds exactly what the clients were told; PostgreSQL has connections from every node (the
    routers on the head and worker 1, the twin's replicas on both workers)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(timeout=120) as client:
        made = client.post(
            deployed.url(1) + "/admin/keys", json={"name": "cluster-team"}, headers=admin
        )
        assert made.status_code == 201, made.text
        key, told = made.json()["key"], {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for node in deployed.nodes:
            for path in (SHARED, ONE_HOP):
                answer = _chat_as(client, deployed.url(node) + path, key)
                assert answer.status_code == 200, (node, path, answer.text)
                usage = answer.json()["usage"]
                told["requests"] += 1
                told["prompt_tokens"] += usage["prompt_tokens"]
                told["completion_tokens"] += usage["completion_tokens"]

        def ledger() -> dict:
            rows = client.get(
                deployed.url(2) + "/admin/usage",
                params={"key": "cluster-team", "group_by": "key"},
                headers=admin,
            ).json()["data"]
            return {name: sum(row[name] for row in rows) for name in told}

        # each process writes its counts every second
        assert wait_until(ledger, lambda seen: seen == told, timeout_s=15) == told
    with psycopg.connect(deployed.ledger.replace("+psycopg", "")) as connection:
        clients = {
            address
            for (address,) in connection.execute(
                "SELECT DISTINCT host(client_addr) FROM pg_stat_activity"
                " WHERE client_addr IS NOT NULL"
            )
        }
    deployed.log.append(f"ledger on PostgreSQL: {told}; connections from {sorted(clients)}")
    assert set(deployed.nodes.values()) <= clients, (deployed.nodes, clients)


def test_a_live_edit_from_a_worker_reaches_every_nodes_proxy(deployed):
    """``deploy_app.py --address`` run on worker 1 adds a model; every node's proxy serves it at
    once (the edit back runs on the head)."""
    earlier = deployed.state("[j.job_id for j in jobs()]")
    deployed.deploy(_config(TWIN_MODEL, VIT, usage=deployed.ledger), from_node=1)
    # the driver that applied it ran on worker 1's node, as Ray's job table says
    drivers = f"[j for j in jobs() if j.type == 'DRIVER' and j.job_id not in {earlier!r}]"
    placed = deployed.state(f"[j.driver_info.node_ip_address for j in {drivers}]")
    assert placed == [deployed.nodes[1]], placed
    try:
        with httpx.Client(headers=auth_headers(), timeout=120) as client:
            for node in deployed.nodes:
                models = client.get(deployed.url(node) + "/v1/models").json()["data"]
                assert "tiny-vit" in {m["id"] for m in models}, (node, models)
                classified = client.post(
                    deployed.url(node) + "/v2/models/tiny-vit/infer",
                    json=infer_body([b64(image_file(seed=node))]),
                )
                assert classified.status_code == 200, (node, classified.text)
    finally:
        deployed.deploy(_config(TWIN_MODEL, usage=deployed.ledger))


@dataclass
class Load:
    """Streams kept running against a model until stopped: how each ended."""

    urls: list[str]
    results: list[tuple[str, str, float]] = field(default_factory=list)  # url, outcome, started
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._loop, args=(url,)) for url in self.urls]
        for thread in threads:
            thread.start()
        return threads

    def _loop(self, url: str) -> None:
        body = {"stream": True, "max_tokens": 200, "ignore_eos": True}
        with httpx.Client(headers=auth_headers(), timeout=60) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                outcome = _stream_outcome(client, url, body)
                self.results.append((url, outcome, started))
                if outcome != "ok":  # as a client backs off (a 503's Retry-After), not a storm
                    self.stop.wait(0.5)

    def counts(
        self, since: float = 0, until: float = float("inf"), path: str = ""
    ) -> dict[str, int]:
        """How the requests started in [since, until) (on URLs whose path is ``path``) ended."""
        counted: dict[str, int] = {}
        for url, outcome, started in self.results:
            if since <= started < until and (not path or httpx.URL(url).path == path):
                counted[outcome] = counted.get(outcome, 0) + 1
        return counted


@contextlib.contextmanager
def killed_under_load(cluster: LocalCluster, node: int, urls: list[str]):
    """Two streams at a time on each of ``urls``, kept going; once some were answered, node
    ``node`` is killed. Yields (the load, when it was killed); the load stops on leaving."""
    load = Load(urls * 2)
    threads = load.run()
    try:
        wait_until(lambda: load.counts().get("ok", 0), lambda ok: ok >= len(urls), timeout_s=120)
        killed = cluster.run("kill", str(node), timeout=60)
        assert killed.returncode == 0, killed.stderr
        yield load, time.monotonic()
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(120)


def _stream_outcome(client: httpx.Client, url: str, body: dict) -> str:
    """ok, error-event (the OpenAI error in the stream, then [DONE]), cut (the connection ended),
    or the status of a refused request (``_refusal``)."""
    try:
        with _chat_stream(client, url, body) as response:
            if response.status_code != 200:
                response.read()
                return _refusal(response)
            lines = [line for line in response.iter_lines() if line]
    except httpx.HTTPError:
        return "cut"
    done = bool(lines) and lines[-1] == "data: [DONE]"
    if any('"error"' in line for line in lines):
        return "error-event" if done else "error-event without [DONE]"
    return "ok" if done else "cut"


def _refusal(response: httpx.Response) -> str:
    """A refused request's status, as the platform answers one, whoever refuses it (the request
    policy, or HAProxy for a replica that died before answering: ``common/haproxy_errors.py``):
    the OpenAI error shape, with Retry-After on a 503. Else "<status> bare: <body>"."""
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    retry = response.status_code != 503 or "retry-after" in response.headers
    if isinstance(error, dict) and {"message", "type", "code"} <= error.keys() and retry:
        return str(response.status_code)
    return f"{response.status_code} bare: {response.text[:80]!r}"


def _chat_stream(client: httpx.Client, url: str, body: dict):
    request = {"model": TWIN, "messages": [{"role": "user", "content": "hi"}], **body}
    return client.stream("POST", url, json=request)


def test_a_worker_lost_under_load(deployed):
    """Streams through the head's and the surviving worker's proxies, on both paths; worker 2
    is killed: streams it carried end (an error event on /v1, the connection on the per-model
    path), one it had not begun to answer gets a 503 to retry (never a bare 500), every request
    started after the kill succeeds, and the model is back at two replicas once the node
    returns, unaided."""
    urls = [deployed.url(node) + path for node in (0, 1) for path in (SHARED, ONE_HOP)]
    routers = deployed.replica_nodes("MultiModelRouter", app="platform")
    with killed_under_load(deployed, 2, urls) as (load, killed_at):
        # Ray marks the node dead after its health checks fail (until then its replica is ALIVE)
        left = wait_until(
            lambda: deployed.replica_nodes(TWIN),
            lambda nodes: deployed.nodes[2] not in nodes,
            timeout_s=180,
            every_s=1,
        )
        detected_s = time.monotonic() - killed_at
        assert left == [deployed.nodes[1]], left
        wait_until(
            lambda: load.counts(since=killed_at).get("ok", 0), lambda ok: ok >= 20, timeout_s=300
        )
        _a_worker_without_the_token_is_refused(deployed)
    before, after = load.counts(until=killed_at), load.counts(since=killed_at)
    by_path = {
        p: (load.counts(until=killed_at, path=p), load.counts(killed_at, path=p))
        for p in (SHARED, ONE_HOP)
    }
    started = deployed.run("start", "2", timeout=300)
    assert started.returncode == 0, started.stderr
    back_at = time.monotonic()
    nodes = wait_until(
        lambda: deployed.replica_nodes(TWIN), lambda n: len(n) == 2, timeout_s=600, every_s=2
    )
    placed_s = time.monotonic() - back_at
    _serving_on_both_replicas(deployed)  # the new replica's engine started: full strength
    full_s = time.monotonic() - back_at
    deployed.log.append(
        f"worker 2 killed under {len(urls) * 2} streams (routers on {routers}): started before "
        f"the kill {before}, "
        f"after {after} (by path, before and after: {by_path}); Ray saw its replica dead "
        f"{detected_s:.0f} s after the kill; two replicas placed {placed_s:.0f} s and both "
        f"serving {full_s:.0f} s after the node came back ({nodes})"
    )
    assert set(after) == {"ok"}, after  # every request started after the kill succeeded
    assert set(before) <= {"ok", "error-event", "cut", "503"}, before
    # No router on the lost worker (the head and worker 1 run them): a /v1 stream whose replica
    # was lost ends with the error event and [DONE], never cut
    assert routers == [deployed.nodes[0], deployed.nodes[1]], routers
    assert set(by_path[SHARED][0]) <= {"ok", "error-event", "503"}, by_path
    assert len(nodes) == 2


def _serving_on_both_replicas(cluster: LocalCluster) -> None:
    """Until /ready (through worker 1) counts both of the model's replicas running."""
    with httpx.Client(headers=auth_headers(), timeout=60) as client:
        wait_until(
            lambda: client.get(cluster.url(1) + "/ready").json()["models"][TWIN]["replicas"],
            lambda replicas: replicas["running"] == replicas["target"] == 2,
            timeout_s=600,
            every_s=1,
        )


def _a_worker_without_the_token_is_refused(cluster: LocalCluster) -> None:
    """A node started in the lost worker's namespace without the token never joins."""
    home = cluster.workdir / "home"
    home.mkdir(exist_ok=True)  # no ~/.ray/auth_token there
    ray = str(ROOT / ".venv" / "bin" / "ray")
    command = ["ip", "netns", "exec", f"{PREFIX}n2", ray, "start", "--address"]
    command += [f"{cluster.nodes[0]}:6379", "--node-ip-address", cluster.nodes[2]]
    command += ["--temp-dir", str(STATE / "intruder"), "--num-cpus", "1"]
    env = {**cluster.env, "HOME": str(home), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        refused = result.returncode != 0
        said = (result.stdout + result.stderr)[-400:]
    except subprocess.TimeoutExpired:
        refused, said = True, "ray start waited 120 s and never joined"
    joined = _alive(cluster, cluster.nodes[2])
    cluster.run("kill", "2", timeout=60)  # what the attempt left running in the namespace
    cluster.log.append(f"a worker without the token: refused={refused and not joined}: {said!r}")
    assert refused and not joined


def _alive(cluster: LocalCluster, address: str) -> bool:
    return address in cluster.state("[n.node_ip for n in nodes(state='ALIVE')]")


def test_the_control_plane_refuses_callers_without_the_token(cluster):
    dashboard = f"http://{cluster.nodes[0]}:8265"
    token = (STATE / "token").read_text().strip()
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{dashboard}/api/jobs/").status_code in (401, 403)
        authorized = client.get(f"{dashboard}/api/jobs/", headers=auth_headers(token))
        assert authorized.status_code == 200, authorized.text
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env |= {"HOME": str(cluster.workdir / "home"), "RAY_AUTH_MODE": "disabled"}
    (cluster.workdir / "home").mkdir(exist_ok=True)
    submit = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ray"), "job", "submit", "--address", dashboard]
        + ["--no-wait", "--", "env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    cluster.log.append(f"job submission without the token: exit {submit.returncode}")
    assert submit.returncode != 0, submit.stdout
    assert re.search(r"401|[Uu]nauthori[sz]ed|[Aa]uthentication", submit.stdout + submit.stderr)


def test_a_batch_job_runs_its_actors_on_several_nodes(deployed, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(16):
        (images / f"{seed}.png").write_bytes(image_file(seed=seed))
    config = tmp_path / "batch.yaml"
    vit = {**VIT, "deployment_config": {"ray_actor_options": {"num_cpus": 1}, "num_replicas": 2}}
    config.write_text(yaml.safe_dump(_config(vit)))
    output = tmp_path / "labels.jsonl"
    result = deployed.run(
        "exec", str(ROOT / ".venv" / "bin" / "python"), "deploy_app.py", "batch",
        "--config", str(config), "--model", "tiny-vit", "--input", f"{images}/*.png",
        "--output", str(output), "--address", f"{deployed.nodes[0]}:6379",
        # both actors up before the first batch: 16 rows take one actor less time than the other
        # takes to start, and Ray Data sends them to whichever is up
        RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="300",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 16 and not [r for r in rows if "error" in r], rows[:3]
    # The actors that ran: Ray Data may ask for more than the cluster places before the job
    # ends (those never had a node)
    workers = "[a for a in actors() if 'MapWorker' in a.class_name]"
    actor_nodes = deployed.state(f"sorted({{ips[a.node_id] for a in {workers} if a.node_id}})")
    unplaced = deployed.state(f"len([a for a in {workers} if not a.node_id])")
    deployed.log.append(
        f"batch job: 16 rows, Ray Data's actors on {actor_nodes} ({unplaced} never placed)"
    )
    assert len(actor_nodes) >= 2, actor_nodes  # type: ignore[arg-type]


def test_the_head_lost_under_load_with_gcs_fault_tolerance(deployed):
    """The head (its GCS state in Redis) is killed while clients stream through worker 1's proxy,
    and kept down for ``HEAD_DOWN_S``: worker 1 serves both paths meanwhile (its HAProxy, a router
    and the replicas need no head). The head restarts and its controller recovers the running
    replicas: the same actors, no redeploy, no cold start."""
    if not deployed.redis:
        pytest.skip("needs Debian's redis-server (apt-get install -y redis-server)")
    # Both replicas serving (a replica the worker test replaced may still be starting: a
    # controller that recovers finds it uninitialized and starts it again)
    _serving_on_both_replicas(deployed)
    replicas = deployed.replica_actors(TWIN)
    routers = deployed.replica_nodes("MultiModelRouter", app="platform")
    urls = [deployed.url(1) + path for path in (SHARED, ONE_HOP)]
    with killed_under_load(deployed, 0, urls) as (load, killed_at):
        time.sleep(HEAD_DOWN_S)  # the outage itself, not a wait for a state
        down_until = time.monotonic()
        started = deployed.run("start", "0", timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr[-2000:]
        back_at = time.monotonic()
        with httpx.Client(headers=auth_headers(), timeout=60) as client:

            def serving() -> int:
                try:
                    return _chat(client, deployed.url(0) + SHARED).status_code
                except httpx.HTTPError:
                    return 0

            recovered = wait_until(serving, lambda code: code == 200, timeout_s=600, every_s=2)
        recovered_s = time.monotonic() - back_at
        # the load goes on past the controller's recovery of the replicas
        wait_until(lambda: load.counts(since=time.monotonic() - 5), bool, timeout_s=60)
    outage = {path: load.counts(killed_at, down_until, path) for path in (SHARED, ONE_HOP)}
    after = {path: load.counts(since=down_until, path=path) for path in (SHARED, ONE_HOP)}
    deployed.log.append(
        f"head down {down_until - killed_at:.0f} s under {len(urls) * 2} streams through worker "
        f"1 (routers on {routers}): before the kill {load.counts(until=killed_at)}, while down "
        f"{outage}; the head's proxy served again {recovered_s:.0f} s after its restart, no "
        f"redeploy; after the restart {after}"
    )
    measured = deployed.log[-1]  # in every failure's message: CI keeps only the digest's lines
    assert recovered == 200, measured
    for path in (SHARED, ONE_HOP):  # Serve's data plane without the head, on both paths
        assert outage[path].get("ok", 0) > 0, measured
        assert set(outage[path]) <= {"ok"} and set(after[path]) <= {"ok"}, measured
    recovered_replicas = deployed.replica_actors(TWIN)
    assert recovered_replicas == replicas, (measured, replicas, recovered_replicas)  # not restarted


def test_the_default_config_serves_through_every_nodes_proxy(deployed):
    """The README's ``model_config.yaml`` applied to the cluster (last: it replaces the
    application the tests above used): every node's proxy lists its models, and a worker's proxy
    serves the real chat model on both paths and the embeddings."""
    default = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    (app,) = default["applications"]
    model_ids = {m["model_loading_config"]["model_id"] for m in app["args"]["models"]}
    deployed.deploy(default)
    question = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    chat = {"model": "smollm2", "max_tokens": 16, "temperature": 0} | question
    with httpx.Client(timeout=120) as client:  # the default config asks no key
        for node in deployed.nodes:
            listed = {m["id"] for m in client.get(deployed.url(node) + "/v1/models").json()["data"]}
            assert model_ids <= listed, (node, model_ids - listed)
        answers = [
            client.post(deployed.url(2) + "/v1/chat/completions", json=chat),
            client.post(deployed.url(1) + "/models/smollm2/v1/chat/completions", json=chat),
        ]
        embedded = client.post(
            deployed.url(2) + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"}
        )
        ready = client.get(deployed.url(1) + "/ready")
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    said = [a.json()["choices"][0]["message"]["content"] for a in answers]
    deployed.log.append(
        f"default config: {len(model_ids)} models listed by every node's proxy; smollm2 through "
        f"worker 2 (/v1) and worker 1 (its own URL) said {said}"
    )
    assert all(text.strip() for text in said), said
    assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384
    assert ready.status_code == 200, ready.text
