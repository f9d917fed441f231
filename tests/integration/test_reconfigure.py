"""Editing the YAML of the running session platform: only what changed restarts.

An edit adds B and D (image classifiers). While a client streams from tiny-chat through both the
shared ``/v1`` and its own URL, ``deploy_app.py --address auto`` applies an edit that adds C,
removes B, changes D's ``top_k`` and removes cold-chat (a vLLM model with a URL of its own, so
HAProxy's routes change under the streams): every other model of the session stays up. (D is a
transformers model, restarted in seconds: which replicas an edit restarts is the same for every
model type, one application per model; a vLLM D cost two cold vLLM starts.) Then tiny-chat's
replica is killed while it streams, and an edit of ``router.request_timeout_s`` cuts a request
that runs past it, on both paths. Last, ``--watch``
applies each save of the file, the session's own config among them.

Each edit is the session's config with the test's changes, so it also takes back what the test
before it changed: no apply is spent restoring in between (these tests run after all others).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from tests.integration.helpers import (
    ADMIN_KEY,
    API_KEY,
    HELLO,
    ROOT,
    auth_headers,
    deploy_command,
    fresh_ready,
    replica_actors,
    wait_until,
)
from tests.integration.session_config import CHAT, COLD_CHAT
from tests.media_files import b64, image_file, infer_body

pytestmark = pytest.mark.edits_platform


def _vit(model_id: str, top_k: int = 5) -> dict:
    return {
        "model_loading_config": {
            "model_id": model_id,
            "model_source": "./.models/tiny-vit",
            "type": "vision",
        },
        "deployment_config": {"ray_actor_options": {"num_cpus": 0.05}},
        "engine_kwargs": {"task": "image-classification", "top_k": top_k},
    }


def _with(platform, models: list[dict] = (), removed: tuple[str, ...] = (), **router) -> dict:
    """The session's config with ``models`` added, ``removed`` taken out and ``router`` settings
    changed."""
    config = copy.deepcopy(platform.config)
    args = config["applications"][0]["args"]
    args["models"] = [
        m for m in args["models"] if m["model_loading_config"]["model_id"] not in removed
    ] + list(models)
    args["router"] = {**args.get("router", {}), **router}
    return config


@pytest.fixture
def session(platform):
    """The session platform, as the test before left it."""
    return platform.require_owned()


def _models(base: str) -> dict:
    """Each model's state, placement ids included (an admin key's view), as of this call."""
    return fresh_ready(base, ADMIN_KEY).json()["models"]


def _applied(platform, config: dict, **env: str) -> None:
    result = platform.apply(config, **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


class StreamingClient(threading.Thread):
    """Streams chat answers from A in a loop, alternating its two URLs, counting outcomes."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.clients = [
            openai.OpenAI(base_url=f"{base}{prefix}/v1", api_key=API_KEY, max_retries=0, timeout=60)
            for prefix in ("", f"/models/{CHAT}")
        ]
        self.done, self.failures = 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            client = self.clients[self.done % 2]
            try:
                chunks = list(
                    client.chat.completions.create(
                        model=CHAT,
                        messages=HELLO,
                        max_tokens=16,
                        stream=True,
                        extra_body={"ignore_eos": True},
                    )
                )
                assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 0
                self.done += 1
                self.stop.wait(
                    0.5
                )  # a steady client, not a flood: the edit's replicas start on the same 2 cores
            except Exception as exc:  # counted, not raised: the test asserts on the count
                self.failures.append(repr(exc))
                self.done += 1


def test_keys_rotated_in_the_environment_apply_on_both_paths_without_a_restart(session):
    """``PLATFORM_TEST_API_KEYS`` rotated where ``deploy_app.py --address auto`` runs: the old key
    is refused and the new one served on the router and the one-hop URL, by the same replicas."""
    rotated = "test-key-rotated-by-the-operator"
    actors = replica_actors(session.url)

    def status(key: str, prefix: str) -> int:
        return httpx.get(
            f"{session.url}{prefix}/v1/models", headers=auth_headers(key), timeout=30
        ).status_code

    prefixes = ("", f"/models/{CHAT}")
    try:
        _applied(session, session.config, PLATFORM_TEST_API_KEYS=rotated)
        for prefix in prefixes:
            assert (status(API_KEY, prefix), status(rotated, prefix)) == (401, 200), prefix
        assert replica_actors(session.url) == actors  # no replica restarted, no model reloaded
    finally:
        _applied(session, session.config)  # this environment's keys again
    assert [status(API_KEY, prefix) for prefix in prefixes] == [200, 200]


def test_a_key_entry_added_then_removed_in_the_file_applies_without_a_restart(session):
    """A new ``api_keys`` entry in the file, applied with ``--address``: its key is served on the
    router and the one-hop URL; removed again, it is refused; the same replicas throughout (the
    entries reach them as their ``user_config``, not in the applications' args)."""
    added = "test-key-added-by-an-entry"
    actors = replica_actors(session.url)
    config = copy.deepcopy(session.config)
    entry = {"name": "added", "key_env": "PLATFORM_TEST_ADDED_KEY", "models": [CHAT]}
    config["applications"][0]["args"]["api_keys"].append(entry)

    def statuses() -> list[int]:
        return [
            httpx.get(
                f"{session.url}{prefix}/v1/models", headers=auth_headers(added), timeout=30
            ).status_code
            for prefix in ("", f"/models/{CHAT}")
        ]

    try:
        _applied(session, config, PLATFORM_TEST_ADDED_KEY=added)
        assert statuses() == [200, 200]
    finally:
        _applied(session, session.config)
    assert statuses() == [401, 401]
    assert replica_actors(session.url) == actors  # no replica restarted, no model reloaded


def test_an_edit_restarts_only_what_changed(session):
    base = session.url
    _applied(session, _with(session, [_vit("b-vit"), _vit("d-vit", top_k=1)]))
    before = _models(base)
    assert {"b-vit", "d-vit", CHAT, COLD_CHAT} <= set(before)
    changed = ("b-vit", "d-vit", COLD_CHAT)
    untouched = {m: a for m, a in replica_actors(base).items() if m not in changed}
    assert len(_labels(base, "d-vit")) == 1
    streaming = StreamingClient(base)
    streaming.start()
    try:
        _applied(
            session,
            _with(session, [_vit("d-vit", top_k=3), _vit("c-vit")], removed=(COLD_CHAT,)),
        )
    finally:
        streaming.stop.set()
        streaming.join(120)
    assert streaming.failures == [] and streaming.done >= 2, (
        streaming.done,
        streaming.failures[:3],
    )
    after = _models(base)
    assert set(after) == set(before) - {"b-vit", COLD_CHAT} | {"c-vit"}
    # every model the edit did not name kept its replica, the one it changed got a new one
    assert {m: a for m, a in replica_actors(base).items() if m in untouched} == untouched
    assert after["d-vit"]["placement"]["actor_id"] != before["d-vit"]["placement"]["actor_id"]
    assert len(_labels(base, "d-vit")) == 3  # the new replica runs the new setting
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0)
    listed = {m.id for m in client.models.list().data}
    assert {"c-vit", "d-vit"} <= listed and not {"b-vit", COLD_CHAT} & listed
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="b-vit", messages=HELLO)
    gone = httpx.get(f"{base}/models/{COLD_CHAT}/v1/models", headers=auth_headers(), timeout=30)
    assert gone.status_code == 404, gone.text  # its own URL left HAProxy's routes
    assert _labels(base, "c-vit")


def _labels(base: str, model: str) -> list[str]:
    """The labels ``model`` gives one image, asking for no ``top_k`` of its own."""
    answer = httpx.post(
        f"{base}/v2/models/{model}/infer", headers=auth_headers(), timeout=60, json=_image_request()
    )
    assert answer.status_code == 200, answer.text
    (labels,) = [o for o in answer.json()["outputs"] if o["name"] == "labels"]
    return labels["data"]


def test_a_bad_edit_changes_nothing(session):
    before = replica_actors(session.url)
    bad = copy.deepcopy(session.config)
    bad["applications"][0]["args"]["models"][1]["deployment_config"]["num_replicas"] = 0
    result = session.apply(bad)
    assert result.returncode == 1
    assert "applications[0].args.models[1].deployment_config.num_replicas" in result.stderr, (
        result.stderr
    )
    assert replica_actors(session.url) == before


def _image_request() -> dict:
    return infer_body([b64(image_file())])


def test_a_replica_killed_mid_stream_ends_its_stream_with_an_error_event(session):
    base = session.url
    pid = _replica_pid(base)
    body = {
        "model": CHAT,
        "messages": HELLO,
        "max_tokens": 200,
        "n": 16,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(pid, signal.SIGKILL)
            events = [line.removeprefix("data: ") for line in lines if line]
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert error["code"] == "model_unavailable" and error["type"] == "service_unavailable_error"
    # Serve replaces the replica with no operator action; the model answers again.
    replaced = wait_until(lambda: _replica_pid(base), lambda p: p not in (None, pid), 600, 2)
    assert replaced not in (None, pid)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    assert client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=4).choices


def _replica_pid(base: str) -> int | None:
    """The pid of the replica that answers tiny-chat's stats, once /ready is 200."""
    ready = fresh_ready(base, ADMIN_KEY)
    if ready.status_code != 200:
        return None
    return ready.json()["models"][CHAT].get("placement", {}).get("pid")


def test_a_request_past_request_timeout_s_is_cut_and_its_generation_aborted(session):
    base = session.url
    pid_before = _replica_pid(base)
    _applied(session, _with(session, request_timeout_s=0.5))
    assert _replica_pid(base) == pid_before is not None  # reconfigured in place, not restarted
    aborted_before = _models(base)[CHAT]["requests_aborted"]
    # As many sequences as tiny-chat's max_num_seqs, of 230 tokens each: seconds of work on the
    # CPU for each request, and the two share the engine, well past 0.5 s.
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 230, "n": 64, "ignore_eos": True}
    with (
        httpx.Client(base_url=base, headers=auth_headers(), timeout=120) as http,
        ThreadPoolExecutor(2) as pool,
    ):
        plain = pool.submit(http.post, "/v1/chat/completions", json=body)
        streamed = pool.submit(
            _stream_events, http, f"/models/{CHAT}/v1/chat/completions", {**body, "stream": True}
        )
        plain, (status, events) = plain.result(), streamed.result()
    assert plain.status_code == 504, plain.text[:300]
    assert plain.json()["error"]["code"] == "timeout"
    assert plain.json()["error"]["type"] == "timeout_error"
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    assert json.loads(events[-2])["error"]["code"] == "timeout", events[-3:]
    # The generations were aborted in vLLM, not left to run to their end.
    stats = wait_until(
        lambda: _models(base)[CHAT],
        lambda s: s["requests_aborted"] >= aborted_before + 2 and s["unfinished_requests"] == 0,
    )
    assert stats["requests_aborted"] >= aborted_before + 2, stats
    assert stats["unfinished_requests"] == 0, stats


def _stream_events(http: httpx.Client, url: str, body: dict) -> tuple[int, list[str]]:
    with http.stream("POST", url, json=body) as response:
        return response.status_code, [
            line.removeprefix("data: ") for line in response.iter_lines() if line
        ]


def test_watch_applies_each_save_and_a_bad_save_changes_nothing(session):
    base, path = session.url, session.config_path
    good = copy.deepcopy(session.config)
    path.write_text(yaml.safe_dump(good))
    session.edited = True  # the watcher applies what the test saves
    actors, models = replica_actors(base), set(_models(base))
    log = path.parent / "watch.log"
    with open(log, "w") as out:
        watcher = subprocess.Popen(
            deploy_command(path, "auto", "--watch"),
            cwd=ROOT,
            env=session.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # the file applied as it is (nothing changed), then watched
        _wait_for_line(log, "watching", 1, watcher)
        bad = copy.deepcopy(good)
        bad["applications"][0]["args"]["models"][0]["deployment_config"]["num_replicas"] = 0
        path.write_text(yaml.safe_dump(bad))
        _wait_for_line(log, "nothing changed", 1, watcher)
        assert "applications[0].args.models[0].deployment_config.num_replicas" in log.read_text()
        assert replica_actors(base) == actors

        added = copy.deepcopy(good)
        added["applications"][0]["args"]["models"].append(_vit("e-vit"))
        path.write_text(yaml.safe_dump(added))
        _wait_for_line(log, "ready: http", 2, watcher)
        after = _models(base)
        assert {m: a for m, a in replica_actors(base).items() if m != "e-vit"} == actors
        assert after.get("e-vit", {}).get("placement", {}).get("actor_id"), (
            after.keys(),
            log.read_text()[-3000:],
        )
        path.write_text(yaml.safe_dump(good))  # the next save removes it again
        _wait_for_line(log, "ready: http", 3, watcher)
        session.edited = False  # the session's own config runs again
        assert replica_actors(base) == actors
    finally:
        watcher.terminate()
        code = watcher.wait(60)
    # Stopping the watcher leaves the platform serving; Ray's C++ SIGTERM handler, which aborts a
    # stop that takes over 3 s, never saw the signal.
    assert code == 0, log.read_text()[-2000:]
    assert "SIGTERM received" not in log.read_text()
    assert set(_models(base)) == models


def _wait_for_line(
    log, text: str, count: int, process: subprocess.Popen, timeout_s: float = 900
) -> None:
    """Until ``log`` holds ``count`` lines that start with ``text``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        if sum(line.startswith(text) for line in log.read_text().splitlines()) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"no {count} x {text!r} (exit {process.poll()}):\n{log.read_text()[-3000:]}"
    )
