"""HAProxy refuses what a deployment cannot take in, before any hop (issue 32).

Ray generates HAProxy's config and offers no hook for it: ``scripts/haproxy``, which Ray starts
as HAProxy, hands this module the config and starts HAProxy on the gated copy it writes beside
it. A burst beyond a model's capacity was otherwise refused only where the request policy counts
it (``serve/policy/capacity.py``), behind everything before it there: on the per-model URL, a
call per request to the model's ``VariantRouter`` (HAProxy's Lua hop), on ``/v1``, the router's
event loop behind the admitted requests' work; a burst of 576 at 64 running + 128 queued got its
503s after 0.7-1.4 s (bench/README.md, overload). HAProxy counts each gated deployment's requests
in flight (a stick table's ``conn_cur``) and answers the one past its capacity with the policy's
503 (``server_busy``, OpenAI's error shape, ``Retry-After``), in a few ms.

The limits come from the request policy of each serving process, which publishes them
(``publish``) into HAProxy's directory on its node: a one-hop replica its deployment's capacity per
replica, keyed by its URL; the router each deployment's capacity per router process, keyed by the
body's ``model`` (read with ``json_query``). HAProxy reads them when it (re)starts, which Serve
does whenever replicas come or go, so a new model or an edit that restarts one is gated once its
replicas are up. Where nothing was published (no HAProxy on the node, a replica on another node
than HAProxy's, a body whose ``model`` is past HAProxy's buffer or not JSON), the request goes on
to the policy, which refuses it as before.

Standard library only: this runs at every HAProxy (re)start.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from common.haproxy_errors import with_error_answers

GATE_DIR = (
    "capacity"  # beside Ray's per-node HAProxy directories: every HAProxy on the host reads it
)
GATED_CONFIG = "haproxy.platform.cfg"
# How long HAProxy waits for a /v1 body to name its model, at most: past it HAProxy answers 408
# itself, so it must cover a burst on a busy machine (1 s gave 408s to a 200-request burst on 2
# cores), as the router's own body read would.
BODY_WAIT = "10s"
_RULES_MARK = "    # platform capacity gate (common/haproxy_gate.py)"
_TABLE = "type string len 256 size 1k store conn_cur"  # in flight, by deployment


def publish(app: str, gate: dict[str, Any], retry_after_s: int) -> bool:
    """Record the capacity ``gate`` of Serve application ``app`` where this node's HAProxy reads
    it: ``{"direct": {"deployment", "per_server"}}`` for a replica's own URL, ``{"router":
    {"models": {model: deployment}, "limits": {deployment: per_server}, "endpoints": [path]}}``
    for the router's ``/v1``, or neither (nothing to gate). Written only when it changed; False
    where no HAProxy serves on this host."""
    base = _shared_directory()
    if base is None:
        return False
    directory = os.path.join(base, GATE_DIR)
    path = os.path.join(directory, f"{safe_name(app)}.json")
    content = json.dumps({"app": app, "retry_after_s": retry_after_s, **gate}, sort_keys=True)
    try:
        with open(path) as current:
            if current.read() == content:
                return True
    except OSError:
        pass
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as tmp:
        tmp.write(content)
    os.replace(tmp.name, path)  # HAProxy's wrapper never reads half a file
    return True


def _shared_directory() -> str | None:
    """The directory above Ray's per-node HAProxy directories (``<dir>/<node id>/haproxy.cfg``,
    Ray 2.60), when HAProxy serves on this host."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return None
    config = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/haproxy.cfg")
    base = os.path.dirname(config)
    return base if os.path.isdir(base) else None


def safe_name(name: str) -> str:
    """Ray's name for an application in HAProxy's config (``HAProxyManager.get_safe_name``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("#", "-").replace("/", "."))


@dataclass
class _Backend:
    name: str
    header: int  # the index of its ``backend`` line
    servers: int = 0  # not counting the fallback (backup) server

    @property
    def table(self) -> str:
        return f"platform_gate_{self.name}"


def gated_config(
    config: str, gates: list[dict[str, Any]], map_dir: str
) -> tuple[str, dict[str, str]] | None:
    """Ray's HAProxy ``config`` with the capacity gates of ``gates`` (as ``publish`` wrote them),
    and the map files those read (path in ``map_dir`` -> content); None when none applies (no
    gate's application has a backend in ``config``)."""
    lines = config.split("\n")
    backends = _backends(lines)
    hops = set(re.findall(r"set-var\(txn\.ingress_request_router_app\) str\((\S+)\)", config))
    before_hop = next(
        (
            i
            for i, line in enumerate(lines)
            if re.match(r"\s+http-request (wait-for-body|lua\.)", line)
        ),
        None,
    )
    inserts: dict[int, list[str]] = {}
    tables, maps = [], {}
    for gate in sorted(gates, key=lambda g: str(g.get("app"))):
        backend = backends.get(f"http-{safe_name(str(gate.get('app')))}")
        if backend is None:
            continue
        if "direct" in gate:
            # HAProxy's Lua hop to a VariantRouter runs in the frontend, before the backend's rules
            at = before_hop if backend.name in hops else backend.header + 1
            if at is None:
                continue  # Ray's layout changed: no place before the hop
            rules = _direct_rules(backend, gate, backend.name in hops)
        elif "router" in gate:
            at = backend.header + 1
            rules, backend_maps = _router_rules(backend, gate, map_dir)
            maps.update(backend_maps)
        else:
            continue
        inserts.setdefault(at, []).extend([_RULES_MARK, *rules])
        tables.append(f"backend {backend.table}\n    stick-table {_TABLE}")
    if not tables:
        return None
    out = []
    for i, line in enumerate(lines):
        out.extend(inserts.get(i, []))
        out.append(line)
    return "\n".join(out).rstrip("\n") + "\n" + "\n".join(tables) + "\n", maps


def _direct_rules(backend: _Backend, gate: dict[str, Any], in_frontend: bool) -> list[str]:
    """A replica's own URL: every POST to the backend counts; past the replicas' capacity, 503."""
    direct = gate["direct"]
    on = f"{{ var(txn.ingress_request_router_app) -m str {backend.name} }} " if in_frontend else ""
    limit = int(direct["per_server"]) * max(1, backend.servers)  # none up: the first one's worth
    busy = _busy(gate)
    return [
        f"    http-request track-sc0 str({backend.name}) table {backend.table} if METH_POST {on}",
        f"    http-request return {busy} if METH_POST {on}{{ sc0_conn_cur gt {limit} }}",
    ]


def _router_rules(
    backend: _Backend, gate: dict[str, Any], map_dir: str
) -> tuple[list[str], dict[str, str]]:
    """The router's ``/v1``: a POST counts against the deployment of the model its body names
    (a variant's is its model's); past that deployment's capacity over all routers, 503."""
    router, servers = gate["router"], max(1, backend.servers)
    models = os.path.join(map_dir, f"platform-models-{backend.name}.map")
    limits = os.path.join(map_dir, f"platform-limits-{backend.name}.map")
    maps = {
        models: "".join(
            f"{m} {d}\n" for m, d in sorted(router["models"].items()) if _map_safe(m, d)
        ),
        limits: "".join(
            f"{d} {int(n) * servers}\n" for d, n in sorted(router["limits"].items()) if _map_safe(d)
        ),
    }
    found = "{ var(txn.platform_gate) -m found }"
    # the endpoints the router's policy counts, under any route prefix
    endpoints = "{ path_end " + " ".join(sorted(router["endpoints"])) + " }"
    model = f"req.body,json_query('$.model'),map({models})"
    room = f"var(txn.platform_gate),map_str_int({limits},0),sub(txn.platform_gate_in)"
    rules = [
        f"    http-request wait-for-body time {BODY_WAIT} if METH_POST {endpoints}",
        f"    http-request set-var(txn.platform_gate) {model} if METH_POST {endpoints}",
        f"    http-request track-sc0 var(txn.platform_gate) table {backend.table} if {found}",
        f"    http-request set-var(txn.platform_gate_in) sc0_conn_cur if {found}",
        f"    http-request set-var(txn.platform_gate_room) {room} if {found}",
        f"    http-request return {_busy(gate)} if {{ var(txn.platform_gate_room) -m int lt 0 }}",
    ]
    return rules, maps


def _backends(lines: list[str]) -> dict[str, _Backend]:
    """Ray's backends by name, with their replicas' server lines counted."""
    backends: dict[str, _Backend] = {}
    current: _Backend | None = None
    for i, line in enumerate(lines):
        if line and not line[0].isspace():
            words = line.split()
            current = None
            if words[0] == "backend" and len(words) > 1:
                current = backends[words[1]] = _Backend(words[1], i)
        elif (
            current is not None and line.split()[:1] == ["server"] and "backup" not in line.split()
        ):
            current.servers += 1
    return backends


def _busy(gate: dict[str, Any]) -> str:
    """The ``http-request return`` arguments of the 503 past a deployment's capacity, in the
    request policy's shape (``Capacity.refusal``) but naming nothing: HAProxy answers before the
    policy has checked the key and its scope, so the answer must not tell a caller without one
    which models exist."""
    body = (
        '{"error": {"message": "the model is at capacity; retry shortly", '
        '"type": "service_unavailable_error", "param": null, "code": "server_busy"}}'
    )
    retry = int(gate.get("retry_after_s", 1))
    return (
        f"status 503 content-type application/json hdr Retry-After {retry} string {_quoted(body)}"
    )


def _quoted(text: str) -> str:
    """``text`` as one single-quoted word of HAProxy's config: no ``$`` or ``%`` inside it is
    expanded (HAProxy would put environment variables, the keys among them, into the answer)."""
    assert "'" not in text
    return "'" + text + "'"


def _map_safe(*words: str) -> bool:
    """A map file's line holds a key and a value split by whitespace."""
    return all(w and not any(c.isspace() for c in w) for w in words)


def read_gates(directory: str) -> list[dict[str, Any]]:
    gates = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as f:
                    gates.append(json.load(f))
            except (OSError, ValueError) as err:
                print(f"platform capacity gate: skipping {name}: {err}", file=sys.stderr)
    return gates


def main(argv: list[str]) -> int:
    """``python -m common.haproxy_gate <Ray's haproxy.cfg>``: prints the config HAProxy is to start
    with, the platform's copy of Ray's (HAProxy's own errors in the platform's shape,
    ``common/haproxy_errors.py``, and the capacity gates that apply), the files it reads beside
    it; 1 on an error (the wrapper then starts Ray's own)."""
    try:
        (config_path,) = argv
        node_dir = os.path.dirname(os.path.abspath(config_path))
        gates = read_gates(os.path.join(os.path.dirname(node_dir), GATE_DIR))
        with open(config_path) as f:
            config, files = with_error_answers(f.read(), node_dir)
        gated = gated_config(config, gates, node_dir)
        if gated is not None:
            config, maps = gated
            files.update(maps)
        path = os.path.join(node_dir, GATED_CONFIG)
        for name, content in {**files, path: config}.items():
            with open(name, "w") as f:
                f.write(content)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"platform capacity gate: not applied: {err!r}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
