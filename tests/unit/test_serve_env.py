import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from common.serve_env import (
    HAPROXY_WRAPPER,
    STREAMING_ENV,
    apply_streaming_env,
    haproxy_binary_env,
    haproxy_files_env,
    haproxy_processes,
    haproxy_threads_env,
    new_haproxy_directory,
    stop_leftover_haproxy,
    with_replica_env,
)


def test_application_runtime_env_is_kept_and_the_deployment_wins(monkeypatch):
    monkeypatch.delenv("PLATFORM_STREAM_INTERVAL_MS", raising=False)
    app_env = {
        "working_dir": "s3://bucket/code.zip",
        "env_vars": {"HF_TOKEN": "t", "PLATFORM_STREAM_INTERVAL_MS": "20"},
    }
    options = with_replica_env(
        {"num_cpus": 1, "runtime_env": {"pip": ["x"], "env_vars": {"HF_TOKEN": "mine"}}},
        inherited=app_env,
    )
    runtime_env = options["runtime_env"]
    assert options["num_cpus"] == 1
    assert runtime_env["working_dir"] == "s3://bucket/code.zip" and runtime_env["pip"] == ["x"]
    assert runtime_env["env_vars"]["HF_TOKEN"] == "mine"
    assert runtime_env["env_vars"]["PLATFORM_STREAM_INTERVAL_MS"] == "20"
    assert (
        runtime_env["env_vars"]["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"]
        == STREAMING_ENV["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"]
    )
    assert (
        "RAY_worker_niceness" not in runtime_env["env_vars"]
    )  # a raylet setting, not a replica one


def test_process_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("PLATFORM_STREAM_INTERVAL_MS", "3")
    env_vars = with_replica_env({}, inherited={})["runtime_env"]["env_vars"]
    assert env_vars["PLATFORM_STREAM_INTERVAL_MS"] == "3"


def _haproxy_look_alike(tmp_path, config_path) -> subprocess.Popen:
    """A process named haproxy that points at ``config_path``, as Ray starts HAProxy (``tail``
    renamed: it follows the file and runs until killed)."""
    binary = tmp_path / "bin" / "haproxy"
    if not binary.exists():
        binary.parent.mkdir()
        shutil.copy(shutil.which("tail"), binary)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.touch()
    return subprocess.Popen([str(binary), "-f", str(config_path)])


def test_each_platform_gets_a_haproxy_directory_of_its_own_that_no_one_can_guess(monkeypatch):
    monkeypatch.setattr(os, "environ", {"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    apply_streaming_env(8123)
    config = Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
    directory = config.parent
    try:
        assert config.name == "haproxy.cfg" and directory.name.startswith("hap8123-")
        assert directory.stat().st_uid == os.getuid()
        assert directory.stat().st_mode & 0o777 == 0o700  # others can neither list nor enter it
        # HAProxy's admin socket fits the 97 bytes HAProxy allows, below Ray's node directory
        assert len(os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"]) + 57 <= 97
        again = new_haproxy_directory(8123)
        assert again != str(directory) and Path(again).name.startswith("hap8123-")
        os.rmdir(again)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_stop_leftover_haproxy_kills_only_the_platforms_own(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "environ", {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "1"})
    monkeypatch.delenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", raising=False)
    apply_streaming_env(8000)
    ours = os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    theirs = haproxy_files_env(tempfile.mkdtemp(prefix="hap8000-", dir="/tmp"))
    node_dir = "0123abcd"  # Ray puts the config in a directory of the node's id
    mine, other = (
        _haproxy_look_alike(tmp_path, Path(config).parent / node_dir / "haproxy.cfg")
        for config in (ours, theirs["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
    )
    try:
        assert {p.pid for p in haproxy_processes(8000)} >= {mine.pid, other.pid}
        # an operator's own directory: not this process's to clean
        monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/haproxy.cfg")
        assert stop_leftover_haproxy() == [] and mine.poll() is None
        monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", ours)
        assert stop_leftover_haproxy() == [mine.pid]
        assert not psutil.pid_exists(mine.pid) and other.poll() is None  # killed, and reaped
        assert not Path(ours).parent.exists()  # and its directory removed
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()
        shutil.rmtree(Path(theirs["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent)


def test_haproxy_runs_through_the_wrapper_that_turns_splicing_off(monkeypatch):
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
    env = haproxy_binary_env()
    wrapper = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert os.access(wrapper, os.X_OK) and "-dS" in wrapper.read_text()
    assert os.access(env["PLATFORM_HAPROXY_BINARY"], os.X_OK)
    version = subprocess.run(
        [str(wrapper), "-vv"], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert version.returncode == 0 and "HAProxy version" in version.stdout, version.stderr
    monkeypatch.setenv(
        "RAY_SERVE_HAPROXY_BINARY_PATH", "/opt/haproxy/sbin/haproxy"
    )  # an operator's own wins
    assert haproxy_binary_env() == {}


def test_the_wrapper_named_as_rays_haproxy_runs_haproxy_not_itself(monkeypatch):
    """As in the container image, where RAY_SERVE_HAPROXY_BINARY_PATH names the wrapper so that a
    bare ``ray start`` runs it: the wrapper, started with or without the platform's settings,
    finds Ray's HAProxy (it exec'd itself forever, and no HAProxy ever started)."""
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", HAPROXY_WRAPPER)
    monkeypatch.delenv("PLATFORM_HAPROXY_BINARY", raising=False)
    env = haproxy_binary_env()
    assert Path(env["PLATFORM_HAPROXY_BINARY"]).resolve() != Path(HAPROXY_WRAPPER).resolve()
    assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] == HAPROXY_WRAPPER  # put back
    for settings in ({"PLATFORM_HAPROXY_PYTHON": sys.executable}, env):  # the image's python3
        version = subprocess.run(
            [HAPROXY_WRAPPER, "-v"],
            env={**os.environ, **settings},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "HAProxy version" in version.stdout, version.stderr


def test_the_wrapper_runs_haproxy_under_sched_batch_unless_turned_off(tmp_path):
    """A stand-in for HAProxy that prints its scheduling policy and arguments. Both it and the gate
    run on this interpreter, with no site: each ``python3`` through a version shim costs a tenth
    of a second, seconds on a busy machine."""
    stand_in = tmp_path / "haproxy"
    stand_in.write_text(
        "#!/bin/sh\n"
        f'exec {sys.executable} -S -c "import os, sys; print(os.sched_getscheduler(0), '
        '*sys.argv[1:])" "$@"\n'
    )
    stand_in.chmod(0o755)
    inherited = {
        key: value for key, value in os.environ.items() if key != "PLATFORM_HAPROXY_SCHED_BATCH"
    }
    inherited["PLATFORM_HAPROXY_PYTHON"] = sys.executable

    def started(**env: str) -> list[str]:
        run = subprocess.run(
            [HAPROXY_WRAPPER, "-f", "haproxy.cfg"],
            capture_output=True,
            text=True,
            check=True,
            env={**inherited, "PLATFORM_HAPROXY_BINARY": str(stand_in), **env},
        )
        return run.stdout.split()

    assert started() == [str(os.SCHED_BATCH), "-dS", "-f", "haproxy.cfg"]  # by default
    assert started(PLATFORM_HAPROXY_SCHED_BATCH="0") == [
        str(os.sched_getscheduler(0)),
        "-dS",
        "-f",
        "haproxy.cfg",
    ]


def test_an_operators_haproxy_directory_is_made_0700_and_refused_when_others_may_enter(
    tmp_path, monkeypatch
):
    def apply(directory):
        config = str(directory / "haproxy.cfg")
        monkeypatch.setattr(os, "environ", {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": config})
        apply_streaming_env(8123)
        return os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]

    missing = tmp_path / "made"
    assert apply(missing) == str(missing / "haproxy.cfg")  # the files stay where it put them
    assert missing.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)  # others may enter it and reach the admin socket
    with pytest.raises(SystemExit, match=r"shared must be a directory of this user .* mode 755"):
        apply(shared)
    if os.getuid() == 0:  # only root can hand a directory to another user
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 12345, -1)
        with pytest.raises(SystemExit, match="of uid 12345"):
            apply(theirs)
    link = tmp_path / "link"
    link.symlink_to(missing)  # a link another user could point elsewhere
    with pytest.raises(SystemExit, match="not a directory"):
        apply(link)


def test_haproxy_gets_a_thread_per_two_cores_up_to_rays_four(monkeypatch, tmp_path):
    threads = {
        cores: haproxy_threads_env(cores)["RAY_SERVE_HAPROXY_NBTHREAD"]
        for cores in (1, 2, 4, 6, 8, 64)
    }
    assert threads == {1: "1", 2: "1", 4: "2", 6: "3", 8: "4", 64: "4"}
    # what apply_streaming_env sets stays in this test; HAProxy's files where an operator put them
    config = str(tmp_path / "haproxy.cfg")
    monkeypatch.setattr(os, "environ", {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": config})
    apply_streaming_env(8123)
    assert (
        os.environ["RAY_SERVE_HAPROXY_NBTHREAD"]
        == haproxy_threads_env()["RAY_SERVE_HAPROXY_NBTHREAD"]
    )
    monkeypatch.setattr(
        os,
        "environ",
        {"RAY_SERVE_HAPROXY_NBTHREAD": "8", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": config},
    )  # an operator's own count wins
    apply_streaming_env(8123)
    assert os.environ["RAY_SERVE_HAPROXY_NBTHREAD"] == "8"
