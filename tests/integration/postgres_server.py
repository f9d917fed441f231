"""A real PostgreSQL for the usage ledger's tests: Debian's server (``apt-get install postgresql``),
started in a temp dir of its own on a free port, trusting the user ``platform``, and stopped with
its files removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.ports import free_port

USER = "platform"


def _postgres_bin(name: str) -> str:
    """Debian's binary (``/usr/lib/postgresql/<version>/bin``), else the one on PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    assert found[-1], f"{name} is not installed: apt-get install -y postgresql"
    return str(found[-1])


def _as_postgres(command: list[str]) -> list[str]:
    """``command`` as the ``postgres`` user when run as root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def running_postgres(
    also_on: tuple[str, ...] = (), trusted_subnet: str | None = None
) -> Iterator[int]:
    """A server listening on loopback and ``also_on`` (addresses this test made), reachable
    without a password from loopback and from ``trusted_subnet`` (a CIDR); yields its port."""
    root = os.geteuid() == 0
    # as root, under /tmp itself: the postgres user cannot enter the test run's private TMPDIR
    home = Path(tempfile.mkdtemp(prefix="postgres", dir="/tmp" if root else None))
    if root:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()
    initdb = [_postgres_bin("initdb"), "-D", str(data), "-U", USER, "--auth=trust"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
    if trusted_subnet:
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all {USER} {trusted_subnet} trust\n")
    server = subprocess.Popen(
        _as_postgres(
            [_postgres_bin("postgres"), "-D", str(data), "-h", ",".join(("127.0.0.1", *also_on))]
            + ["-p", str(port), "-k", str(home)]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(f"postgresql://{USER}@127.0.0.1:{port}/postgres").close()
                break
            except psycopg.OperationalError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    "postgres did not start"
                )
                time.sleep(0.2)
        yield port
    finally:
        stop = [_postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(stop), capture_output=True, timeout=60)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def ledger_url(host: str, port: int) -> str:
    """The usage database's URL (``usage.database``) of the server on ``host``."""
    return f"postgresql+psycopg://{USER}@{host}:{port}/postgres"
