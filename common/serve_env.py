"""Process-level settings for Ray and Ray Serve that suit LLM streaming.

The replica-side ones travel in each deployment's runtime_env (the builder adds them, see
``with_replica_env``), so ``serve run`` gets them with no shell setup. ``RAY_worker_niceness``
is read by raylet, so it must be in the environment of the process that starts Ray:
``deploy_app.py`` applies it, the Dockerfile sets it, and before ``serve run`` or ``ray
start`` ``eval "$(python -m common.serve_env)"`` exports it. An explicit value always wins.
"""

from __future__ import annotations

import os

STREAMING_ENV = {
    # Ray starts workers at nice 15 so the driver stays responsive; on a serving node the
    # workers *are* the service, and vLLM's engine processes inherit the niceness.
    "RAY_worker_niceness": "0",
    # Run user code on the replica's own event loop: one thread hop less per message.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Buffer request-path log lines instead of writing one per request.
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    # Engines send streamed tokens at most every 10 ms (see common/streaming.py:coalesce).
    "PLATFORM_STREAM_INTERVAL_MS": "10",
}


# Read by the replica processes themselves, so the builder can also hand them to each
# deployment's runtime_env: `serve run` then gets them without any shell setup.
REPLICA_ENV_KEYS = [key for key in STREAMING_ENV if key != "RAY_worker_niceness"]


def apply_streaming_env() -> None:
    for key, value in STREAMING_ENV.items():
        os.environ.setdefault(key, value)


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
    defaults = {key: os.environ.get(key, STREAMING_ENV[key]) for key in REPLICA_ENV_KEYS}
    env_vars = {**defaults, **(inherited.get("env_vars") or {}), **(own.get("env_vars") or {})}
    return {**actor_options, "runtime_env": {**inherited, **own, "env_vars": env_vars}}


def _current_runtime_env() -> dict:
    import ray

    if not ray.is_initialized():
        return {}
    return dict(ray.get_runtime_context().runtime_env or {})
