"""Usage soak (issue 36): the usage ledger against what the clients saw, under mixed traffic from
three keys with one router replica killed midway.

Serves tiny-chat behind two router replicas with a SQLite ledger in a temp dir; makes three keys
through ``/admin/keys``; each key sends, in turn, chat on ``/v1`` (plain and streamed, asking for
usage), chat on the one-hop URL (``/models/tiny-chat/v1``) and a one-step pipeline run. Halfway
through it SIGKILLs one router replica (the platform's own process, found by its Serve process
title in the platform's session). At the end it waits for the ledger to settle and prints, per
key, model and endpoint, the client's counts (answers by status, tokens from each answer's
``usage``) beside the ledger's (``GET /admin/usage``), and the difference.

Where they may differ, and why: a request the killed router was carrying ends with no answer at
the client (counted ``lost``) while the dying router may or may not have recorded it (its last
second of counts dies with it); a pipeline's steps are recorded under their model's tokens, which
the pipeline's answer does not show the client (runs only are compared there).

    python bench/usage_soak.py [--minutes 10] [--concurrency 6]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
from launch import ROOT, default_models, start_platform, stop, wait_ready

sys.path.insert(0, str(ROOT))
from common.rendered_apps import ROUTER_DEPLOYMENT  # noqa: E402

PORT = 8437
CHAT = "tiny-chat"
PIPELINE = "soak-chat"
ADMIN_ENV, ADMIN_KEY = "USAGE_SOAK_ADMIN_KEY", "usage-soak-admin-key-0123456789"
KEYS = ("soak-a", "soak-b", "soak-c")
MESSAGES = [{"role": "user", "content": "hello there"}]


def platform_args(workdir: str) -> dict:
    return {
        "api_keys": [{"name": "admin", "key_env": ADMIN_ENV, "admin": True}],
        "router": {"num_replicas": 2},
        "pipelines": [
            {"model_id": PIPELINE, "steps": [{"task": "chat", "model": CHAT, "max_tokens": 8}]}
        ],
        "usage": {"database": f"sqlite:///{workdir}/usage.db"},
    }


# (path prefix, endpoint the ledger names, body, streamed)
KINDS = (
    ("", "/v1/chat/completions", {"model": CHAT, "messages": MESSAGES, "max_tokens": 8}, False),
    (
        "",
        "/v1/chat/completions",
        {
            "model": CHAT,
            "messages": MESSAGES,
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        True,
    ),
    (
        f"/models/{CHAT}",
        "/v1/chat/completions",
        {"model": CHAT, "messages": MESSAGES, "max_tokens": 8},
        False,
    ),
    ("", "/v1/pipelines", {"model": PIPELINE, "text": "hello there"}, False),
)


class Seen:
    """What the clients saw, per (key, endpoint): answers by status, tokens, lost requests."""

    def __init__(self):
        self.status: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
            collections.Counter
        )
        self.tokens: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
            collections.Counter
        )
        self.lost: collections.Counter = collections.Counter()

    def usage(self, key: str, endpoint: str, usage: dict | None) -> None:
        if usage:
            self.tokens[key, endpoint]["prompt"] += usage.get("prompt_tokens", 0)
            self.tokens[key, endpoint]["completion"] += usage.get("completion_tokens", 0)


async def send(client: httpx.AsyncClient, name: str, secret: str, kind: tuple, seen: Seen):
    prefix, endpoint, body, streamed = kind
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{prefix}/v1/pipelines" if endpoint == "/v1/pipelines" else f"{prefix}{endpoint}"
    try:
        if streamed:
            async with client.stream("POST", url, json=body, headers=headers) as answer:
                usage, done = None, False
                async for line in answer.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"usage"' in line:
                        usage = json.loads(line[6:]).get("usage") or usage
                if answer.status_code == 200 and not done:
                    seen.lost[name, endpoint] += 1
                    return
                seen.status[name, endpoint][answer.status_code] += 1
                seen.usage(name, endpoint, usage)
            return
        answer = await client.post(url, json=body, headers=headers)
        seen.status[name, endpoint][answer.status_code] += 1
        if answer.status_code == 200 and endpoint != "/v1/pipelines":
            seen.usage(name, endpoint, answer.json().get("usage"))
    except httpx.HTTPError:
        seen.lost[name, endpoint] += 1


async def traffic(base: str, keys: dict[str, str], deadline: float, concurrency: int) -> Seen:
    seen = Seen()
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def worker(index: int) -> None:
            turn = index
            while time.monotonic() < deadline:
                name = KEYS[turn % len(KEYS)]
                await send(client, name, keys[name], KINDS[turn % len(KINDS)], seen)
                turn += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return seen


def router_pids(session: int) -> list[int]:
    """The router replicas' processes of this soak's platform (its session: nobody else's)."""
    title = f"ServeReplica:bench:{ROUTER_DEPLOYMENT}"
    listing = subprocess.run(
        ["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        int(pid)
        for pid, sid, args in (line.split(None, 2) for line in listing.splitlines())
        if int(sid) == session and title in args
    ]


async def kill_a_router(session: int, after_s: float) -> str:
    await asyncio.sleep(after_s)
    pids = router_pids(session)
    if not pids:
        return "no router replica found to kill"
    os.kill(pids[0], signal.SIGKILL)
    return f"killed router replica pid {pids[0]} of {pids} at {time.strftime('%H:%M:%S')}"


def wait_all_ready(base: str, proc: subprocess.Popen) -> None:
    """``/ready`` (which needs a key here) says every model and the pipeline are up."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    while httpx.get(f"{base}/ready", headers=headers, timeout=30).status_code != 200:
        if proc.poll() is not None:
            raise RuntimeError(f"the platform exited with {proc.returncode}")
        time.sleep(2)


def make_keys(base: str) -> dict[str, str]:
    keys = {}
    for name in KEYS:
        made = httpx.post(
            f"{base}/admin/keys",
            json={"name": name},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        made.raise_for_status()
        keys[name] = made.json()["key"]
    time.sleep(3)  # every router and replica reads new keys within 2 s
    return keys


def ledger(base: str) -> dict[tuple[str, str], dict]:
    rows = httpx.get(
        f"{base}/admin/usage",
        params={"group_by": "key,endpoint"},  # every row's model is tiny-chat
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    ).json()["data"]
    return {(r["key"], r["endpoint"]): r for r in rows if r["key"] in KEYS}


def report(seen: Seen, rows: dict[tuple[str, str], dict], killed: str, minutes: float) -> None:
    print(f"{minutes:.1f} min, 3 keys; {killed}")
    print(
        f"{'key':7} {'endpoint':22} {'client answers':>15} {'lost':>5} {'ledger requests':>16} "
        f"{'client tokens':>14} {'ledger tokens':>14}"
    )
    for key_name, endpoint in sorted(set(seen.status) | set(rows) | set(seen.lost)):
        answers = sum(seen.status[key_name, endpoint].values())
        row = rows.get((key_name, endpoint), {})
        tokens = seen.tokens[key_name, endpoint]
        client_tokens = (
            "(not shown)"
            if endpoint == "/v1/pipelines"
            else f"{tokens['prompt']}+{tokens['completion']}"
        )
        print(
            f"{key_name:7} {endpoint:22} {answers:>15} {seen.lost[key_name, endpoint]:>5} "
            f"{row.get('requests', 0):>16} {client_tokens:>14} "
            f"{row.get('prompt_tokens', 0)}+{row.get('completion_tokens', 0):<8}"
        )
    statuses = collections.Counter()
    for counts in seen.status.values():
        statuses.update(counts)
    print(f"answers by status: {dict(statuses)}; lost: {sum(seen.lost.values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=6)
    args = parser.parse_args()
    os.environ[ADMIN_ENV] = ADMIN_KEY
    with tempfile.TemporaryDirectory(prefix="usage-soak-") as workdir:
        proc = start_platform(
            default_models(CHAT), PORT, workdir, platform_args=platform_args(workdir)
        )
        base = f"http://127.0.0.1:{PORT}"
        try:
            wait_ready(f"{base}/health", proc, timeout_s=600)
            wait_all_ready(base, proc)
            keys = make_keys(base)
            deadline = time.monotonic() + args.minutes * 60
            start = time.monotonic()

            async def run() -> tuple[Seen, str]:
                return await asyncio.gather(
                    traffic(base, keys, deadline, args.concurrency),
                    kill_a_router(proc.pid, args.minutes * 30),
                )

            seen, killed = asyncio.run(run())
            minutes = (time.monotonic() - start) / 60
            time.sleep(3)  # the ledger is written every second by each process
            report(seen, ledger(base), killed, minutes)
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
