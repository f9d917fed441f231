"""HAProxy in front of the session platform runs the capacity gates its serving processes published
(common/haproxy_gate.py): each vLLM model's own URL at its replicas' capacity, before the Lua hop
where it has variants, and ``/v1`` at each deployment's capacity over the router's replicas."""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from common.haproxy_gate import GATED_CONFIG, safe_name
from common.serve_env import haproxy_processes
from configs import load_platform_config
from configs.deployment_capacity import deployment_limits
from tests.integration.session_config import AFFINITY_CHAT, CHAT


def _running_configs(port: int) -> list[Path]:
    configs = []
    for process in haproxy_processes(port):
        with contextlib.suppress(ProcessLookupError):  # one that a reload just replaced
            arguments = process.info["cmdline"]
            configs.append(Path(arguments[arguments.index("-f") + 1]))
    return configs


def test_haproxy_runs_the_capacity_gates_the_platform_published(platform):
    if platform.config is None:
        pytest.skip("a platform this session did not start (PLATFORM_URL): its config is unknown")
    app = platform.config["applications"][0]
    config = load_platform_config(app["args"])
    replica, router = deployment_limits(config, "replica"), deployment_limits(config, "router")
    configs = _running_configs(urlparse(platform.url).port)
    assert configs and {path.name for path in configs} == {GATED_CONFIG}
    gated = max(configs, key=lambda path: path.stat().st_mtime).read_text()
    lines = gated.splitlines()
    hop = next(i for i, line in enumerate(lines) if "lua.route_via_ingress_request_router" in line)
    for model, replicas in ((CHAT, 1), (AFFINITY_CHAT, 2)):
        backend = f"http-{safe_name(app['name'] + '.' + model)}"
        gate = next(i for i, line in enumerate(lines) if f"track-sc0 str({backend}) " in line)
        assert gate < hop  # refused before HAProxy asks the model's VariantRouter
        assert f"{{ sc0_conn_cur gt {replica[model] * replicas} }}" in lines[gate + 1]
    router_maps = Path(configs[0]).parent
    models = (router_maps / f"platform-models-http-{safe_name(app['name'])}.map").read_text()
    limits = (router_maps / f"platform-limits-http-{safe_name(app['name'])}.map").read_text()
    assert f"{CHAT} {CHAT}\n" in models and f"{CHAT}:sql {CHAT}\n" in models
    routers = config.platform.router.num_replicas
    assert f"{CHAT} {router[CHAT] * routers}\n" in limits
