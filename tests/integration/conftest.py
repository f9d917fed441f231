"""One real platform per test session: ``deploy_app.py`` on the session config, real vLLM on the
CPU.

Every test under ``tests/integration/`` is marked ``integration`` here. Tests marked
``edits_platform`` change the session platform (``deploy_app.py --address auto``), each applying
the session config with its own changes; they run after all the others. A module that starts a
platform or cluster of its own says why in its docstring.

``PLATFORM_URL=http://...`` runs the tests against a platform started apart (see
``tests/integration/session_config.py``); the tests that need this session's Ray skip then.

Order and overlap: the unit tests run first, while the session platform starts in the background;
the batch jobs start as soon as it is up and run beside the other integration tests; the tests
that check them (marker ``batch_jobs``) run after those, then the ones that edit the platform.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.background import InBackground
from tests.integration.batch_jobs import Job, batch_jobs_running
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


STARTED_PLATFORM = pytest.StashKey[InBackground[Platform]]()
STARTED_JOBS = pytest.StashKey[InBackground[dict[str, Job]]]()


def pytest_collection_modifyitems(config, items):
    """Mark every test here ``integration``; run the unit tests first, the ones that check the
    batch jobs after the other integration tests, the ones that edit the session platform last."""
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
    items.sort(
        key=lambda item: (
            item.get_closest_marker("integration") is not None,
            item.get_closest_marker("edits_platform") is not None,
            item.get_closest_marker("batch_jobs") is not None,
        )
    )


def pytest_collection_finish(session):
    """Start the session platform, and then the batch jobs, if the selected tests need them."""
    if session.config.option.collectonly or os.environ.get("PLATFORM_URL"):
        return
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "platform" not in needed:
        return
    started = InBackground(_session_platform, "session-platform")
    session.config.stash[STARTED_PLATFORM] = started
    if "batch_jobs" in needed:
        session.config.stash[STARTED_JOBS] = InBackground(
            functools.partial(_session_batch_jobs, started), "batch-jobs"
        )


def pytest_sessionfinish(session):
    """Whatever was started and not closed by its fixture (a run stopped early): jobs first."""
    for key in (STARTED_JOBS, STARTED_PLATFORM):
        if key in session.config.stash:
            session.config.stash[key].close()


@contextlib.contextmanager
def _session_platform(abort: threading.Event) -> Iterator[Platform]:
    workdir = Path(tempfile.mkdtemp(prefix="platform"))
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
        config, workdir, env=env, extra_args=("--num-cpus", str(NUM_CPUS)), abort=abort
    ) as base:
        yield Platform(
            url=base,
            env=env,
            config_path=workdir / "config.yaml",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            config=config,
        )


@contextlib.contextmanager
def _session_batch_jobs(
    platform: InBackground[Platform], abort: threading.Event
) -> Iterator[dict[str, Job]]:
    env = platform.result().env
    assert env is not None  # the platform this session started
    if abort.is_set():  # the run stopped while the platform started: no jobs to start
        raise RuntimeError("stopped before the batch jobs started")
    with batch_jobs_running(env, Path(tempfile.mkdtemp(prefix="batch"))) as jobs:
        yield jobs


@pytest.fixture(scope="session")
def platform(request) -> Iterator[Platform]:
    """The session platform: started in the background from the session config at the start of
    the session, or found at PLATFORM_URL."""
    if os.environ.get("PLATFORM_URL"):
        yield Platform(url=os.environ["PLATFORM_URL"].rstrip("/"))
        return
    with request.config.stash[STARTED_PLATFORM] as started:
        yield started


@pytest.fixture(scope="session")
def batch_jobs(request, platform) -> Iterator[dict[str, Job]]:
    """The batch jobs the session started once its platform was up (skipped under PLATFORM_URL:
    they run on the session's Ray)."""
    platform.require_owned()
    with request.config.stash[STARTED_JOBS] as jobs:
        yield jobs


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
