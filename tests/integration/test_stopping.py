"""``deploy_app.py`` stopped by SIGTERM (Kubernetes, systemd, a test harness) while it is still
starting: it shuts Serve and its own Ray down and exits 0, leaving no process behind.

A platform of its own: the test stops it, Ray included, which the session platform must outlive.
"""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest
import yaml

from tests.integration.helpers import (
    ROOT,
    deploy_command,
    free_port,
    leftover_haproxy,
    platform_env,
)

pytestmark = pytest.mark.cluster  # a cluster of its own: the docstring says why

VIT = {
    "model_loading_config": {
        "model_id": "vit",
        "model_source": "./.models/tiny-vit",
        "type": "vision",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}},
    "engine_kwargs": {"task": "image-classification"},
}


def test_a_platform_stopped_while_it_starts_shuts_down_cleanly(tmp_path):
    port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "platform",
                "route_prefix": "/",
                "import_path": "builders.app_builder:build_app",
                "args": {"models": [VIT]},
            }
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "platform.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            deploy_command(path),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=platform_env(),
            start_new_session=True,
        )
    try:
        deadline = time.time() + 180
        while (
            "Deploying new app" not in log_path.read_text()
        ):  # Serve runs; the model is not ready yet
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        started = psutil.Process(proc.pid).children(
            recursive=True
        )  # Ray's processes, HAProxy, replicas
        assert started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log_path.read_text()[-3000:]
        _, alive = psutil.wait_procs(started, timeout=60)
        assert [p.pid for p in alive] == [], [
            " ".join(p.cmdline()[:2]) for p in alive if p.is_running()
        ]
        assert (
            leftover_haproxy(port) == []
        )  # nor one that HAProxy started for a reload as Serve stopped
        assert "ready: http" not in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
