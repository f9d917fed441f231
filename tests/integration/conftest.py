"""One real platform per test session: ``deploy_app.py`` on the session config, real vLLM on the
CPU.

Every test under ``tests/integration/`` is marked ``integration`` here. Tests marked
``edits_platform`` change the session platform (``deploy_app.py --address auto``), each applying
the session config with its own changes; they run after all the others. A module that starts a
platform or cluster of its own says why in its docstring.

``PLATFORM_URL=http://...`` runs the tests against a platform started apart (see
``tests/integration/session_config.py``); the tests that need this session's Ray skip then.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.helpers import (
    API_KEY,
    Platform,
    auth_headers,
    free_port,
    platform_env,
    running_platform,
)
from tests.integration.session_config import NUM_CPUS, session_config

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Mark every test here ``integration``; run the ones that edit the session platform last."""
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("edits_platform") is not None)


@pytest.fixture(scope="session")
def platform(tmp_path_factory) -> Platform:
    """The session platform: started here from the session config, or found at PLATFORM_URL."""
    if os.environ.get("PLATFORM_URL"):
        yield Platform(url=os.environ["PLATFORM_URL"].rstrip("/"))
        return
    workdir = tmp_path_factory.mktemp("platform")
    config = session_config(workdir)
    metrics_port = free_port()
    env = {
        **platform_env(),
        "PLATFORM_METRICS_EXPORT_PORT": str(metrics_port),
        "RAY_metrics_report_interval_ms": "1000",  # metrics tests read what they caused in seconds
        # models from cloud URIs are copied afresh each session (test_observability reads the
        # download's progress), not found in ~/.cache from an earlier one
        "PLATFORM_MODEL_CACHE": str(workdir / "model-cache"),
    }
    # The address of a cluster that is gone, as a platform killed without its shutdown leaves it:
    # Ray would wait for it forever; the platform must start a Ray of its own.
    (Path(env["RAY_TMPDIR"]) / "ray").mkdir(exist_ok=True)
    (Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    with running_platform(
        config, workdir, env=env, extra_args=("--num-cpus", str(NUM_CPUS))
    ) as base:
        yield Platform(
            url=base,
            env=env,
            config_path=workdir / "config.yaml",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            config=config,
        )


@pytest.fixture(scope="session")
def platform_url(platform) -> str:
    return platform.url


@pytest.fixture(scope="session")
def client(platform_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(platform_url) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{platform_url}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )


@pytest.fixture(scope="session")
def http(platform_url) -> httpx.Client:
    with httpx.Client(base_url=platform_url, headers=auth_headers(), timeout=120) as c:
        yield c
