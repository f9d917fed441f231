"""KubeRay manifests from the same ``model_config.yaml``: a ``RayService`` (the platform, kept
running and upgraded in place by the operator) and a ``RayJob`` (one command on a cluster
made for it, e.g. a benchmark). ``serveConfigV2`` is the Serve config file itself; worker
groups are sized from what the models ask Ray for (CPUs and GPUs per replica, times their
replicas: the minimum for ``minReplicas``, the autoscaling maximum for ``maxReplicas``).

    python deploy_app.py kuberay rayservice --config model_config.yaml \\
        --image REGISTRY/rayserve-platform:TAG   # default: the tag scripts/build_image.sh gives
    python deploy_app.py kuberay rayjob --config model_config.yaml --image ... \\
        --entrypoint "python bench/audio_batching.py"
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from builders.kuberay_security import SERVE_PORT, Lockdown, locked
from builders.render import render_serve_config
from builders.serve_config import (
    default_config_file,
    load_yaml,
    rendered_schema,
    validate_serve_config,
)
from common.serve_options import replica_range, replica_shape
from configs import LoadedConfig

RAY_VERSION = "2.60.0"
# The image scripts/build_image.sh tags by default: REPOSITORY:cpu or REPOSITORY:gpu.
IMAGE_REPOSITORY = "localhost/rayserve-platform"
CRD_DIR = Path(__file__).parent / "crds"
# Where the image keeps the platform: the Dockerfile's WORKDIR.
IMAGE_PLATFORM_DIR = PurePosixPath("/home/ray/platform")


@dataclass(frozen=True)
class WorkerShape:
    cpus: int = 8
    gpus: int | None = None  # None: as wide as the widest single-node replica
    memory: str = "32Gi"


@dataclass
class Demand:
    """What the models ask Ray for, at their minimum and maximum replica counts."""

    min_cpus: float = 0.0
    max_cpus: float = 0.0
    min_gpus: float = 0.0
    max_gpus: float = 0.0


# A container's /dev/shm is 64 MiB unless the pod mounts memory there: vLLM's engine core needs a
# 160 MiB shared-memory queue and Ray's object store lives in /dev/shm, so every pod mounts an
# in-memory emptyDir (it counts against the container's memory limit, as KubeRay's guide says).
SHARED_MEMORY_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHARED_MEMORY_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def demand(loaded: dict[str, LoadedConfig]) -> tuple[Demand, Demand]:
    """(GPU replicas, CPU-only replicas) demand over every platform application."""
    gpu, cpu = Demand(), Demand()
    for config in loaded.values():
        for spec in config.deployments():
            low, high = replica_range(spec.options)
            shape = replica_shape(spec.options)
            gpus, cpus = shape.gpus, shape.cpus
            target = gpu if gpus else cpu
            target.min_cpus += cpus * low
            target.max_cpus += cpus * high
            target.min_gpus += gpus * low
            target.max_gpus += gpus * high
    return gpu, cpu


def worker_groups(
    gpu: Demand, cpu: Demand, shape: WorkerShape, image: str, env: list[dict]
) -> list[dict]:
    groups = []
    if gpu.max_gpus:
        assert shape.gpus is not None, "a shape from fitted_worker_shape has its GPUs set"
        low = math.ceil(max(gpu.min_gpus / shape.gpus, gpu.min_cpus / shape.cpus))
        high = math.ceil(max(gpu.max_gpus / shape.gpus, gpu.max_cpus / shape.cpus))
        groups.append(_group("gpu-workers", low, high, shape, image, env, gpus=shape.gpus))
    if cpu.max_cpus:
        groups.append(
            _group(
                "cpu-workers",
                math.ceil(cpu.min_cpus / shape.cpus),
                math.ceil(cpu.max_cpus / shape.cpus),
                shape,
                image,
                env,
                gpus=0,
            )
        )
    return groups


def _group(
    name: str, low: int, high: int, shape: WorkerShape, image: str, env: list[dict], gpus: int
) -> dict:
    resources = {"cpu": str(shape.cpus), "memory": shape.memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    return {
        "groupName": name,
        "replicas": max(low, 1),
        "minReplicas": low,
        "maxReplicas": max(high, low, 1),
        "rayStartParams": {},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": image,
                        "env": env,
                        "resources": {"limits": resources, "requests": resources},
                        "volumeMounts": [SHARED_MEMORY_MOUNT],
                    }
                ],
                "volumes": [SHARED_MEMORY_VOLUME],
            }
        },
    }


def fitted_worker_shape(loaded: dict[str, LoadedConfig], shape: WorkerShape) -> WorkerShape:
    """GPU workers at least as wide as the widest replica whose GPUs must share one node
    (STRICT_PACK); that width when ``--gpus-per-worker`` is not given."""
    widest, name = 1, None
    for config in loaded.values():
        for spec in config.deployments():
            replica = replica_shape(spec.options)
            if replica.strategy == "STRICT_PACK" and replica.gpus > widest:
                widest, name = math.ceil(replica.gpus), spec.name
    if shape.gpus is None:
        return dataclasses.replace(shape, gpus=widest)
    if shape.gpus < widest:
        raise ValueError(
            f"{name} needs {widest} GPUs on one node; pass --gpus-per-worker {widest} or more"
        )
    return shape


def ray_cluster_spec(
    loaded: dict[str, LoadedConfig], image: str, shape: WorkerShape, env: list[dict]
) -> dict:
    shape = fitted_worker_shape(loaded, shape)
    gpu, cpu = demand(loaded)
    head_resources = {"cpu": "2", "memory": "8Gi"}
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            # The head runs Ray's control plane and the HTTP proxy, no model replicas. The
            # dashboard listens for KubeRay's operator; the token and the NetworkPolicy keep
            # everyone else out (builders/kuberay_security.py). No Ray Client port.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "ray-head",
                            "image": image,
                            "env": env,
                            "ports": [
                                {"containerPort": 6379, "name": "gcs"},
                                {"containerPort": 8265, "name": "dashboard"},
                                {"containerPort": SERVE_PORT, "name": "serve"},
                            ],
                            "resources": {"limits": head_resources, "requests": head_resources},
                            "volumeMounts": [SHARED_MEMORY_MOUNT],
                        }
                    ],
                    "volumes": [SHARED_MEMORY_VOLUME],
                }
            },
        },
        "workerGroupSpecs": worker_groups(gpu, cpu, shape, image, env),
    }


def cluster_serve_config(raw: dict[str, Any], loaded: dict[str, LoadedConfig]) -> dict[str, Any]:
    """The Serve config as the cluster runs it: one application per model (as ``deploy_app.py``
    renders it, so a RayService update restarts only the models whose entry changed),
    listening on every interface of the pods. Validated as a deploy validates it: rendered
    applications that share a name or a route prefix are refused here, naming the field, instead
    of reaching the cluster."""
    config = render_serve_config(raw, loaded)
    rendered_schema(config)
    config["http_options"] = {
        **(raw.get("http_options") or {}),
        "host": "0.0.0.0",
        "port": SERVE_PORT,
    }
    return config


def pod_env(loaded: dict[str, LoadedConfig], secret: str | None) -> list[dict]:
    """Ray's settings that must be set where Ray starts (HAProxy ingress and its capacity gate,
    worker niceness), and the
    key variables (``api_keys_env``, each key's ``key_env``) from a Kubernetes Secret (key = the
    variable's name; none without ``secret``). A ``key_file`` is the operator's Secret volume to
    mount."""
    from common.serve_env import CLUSTER_ENV_KEYS, STREAMING_ENV

    names = (
        sorted(
            {c.platform.api_keys_env for c in loaded.values() if c.platform.api_keys_env}
            | {k.key_env for c in loaded.values() for k in c.platform.api_keys if k.key_env}
        )
        if secret
        else []
    )
    ray_env = {key: STREAMING_ENV[key] for key in CLUSTER_ENV_KEYS} | haproxy_gate_env()
    return [{"name": key, "value": value} for key, value in ray_env.items()] + [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": secret, "key": n}}} for n in names
    ]


def haproxy_gate_env() -> dict[str, str]:
    """Ray starts HAProxy through the image's ``scripts/haproxy``, which adds the platform's
    capacity gate and error answers (``common/haproxy_gate.py``): set in the manifest, so a
    cluster gets the gate from what it was deployed with, not from an image's ``ENV``."""
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(IMAGE_PLATFORM_DIR / "scripts" / "haproxy"),
        "PLATFORM_HAPROXY_GATE": "1",
    }


def default_image(loaded: dict[str, LoadedConfig]) -> str:
    """The tag scripts/build_image.sh gives the image these models need: gpu when one asks for
    GPUs, else cpu (push it to a registry the cluster reaches and pass that name as --image)."""
    gpu, _ = demand(loaded)
    return f"{IMAGE_REPOSITORY}:{'gpu' if gpu.max_gpus else 'cpu'}"


def render(
    kind: str,
    config_path: str,
    image: str | None,
    name: str,
    shape: WorkerShape,
    entrypoint: str | None = None,
    secret: str = "rayserve-platform-keys",
    lock: Lockdown | None = None,
    job_serves: bool = False,
) -> dict:
    raw = load_yaml(config_path)
    _, loaded = validate_serve_config(raw)  # the whole file first, as a deploy would
    image = image or default_image(loaded)
    lock = _with_yaml_gcs_redis(lock or Lockdown(ray_token_secret=f"{name}-ray-token"), loaded)
    # Keys reach only the containers of a cluster that serves: a RayJob's cluster runs a job
    # (a batch job, a benchmark) and gets none unless it serves the platform itself.
    serves = kind == "rayservice" or job_serves
    env = pod_env(loaded, secret if serves else None)
    cluster = locked(ray_cluster_spec(loaded, image, shape, env), lock)
    metadata = {"name": name, "labels": {"app.kubernetes.io/name": "rayserve-platform"}}
    if kind == "rayservice":
        return {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": metadata,
            "spec": {
                "serveConfigV2": yaml.safe_dump(cluster_serve_config(raw, loaded), sort_keys=False),
                "rayClusterConfig": cluster,
            },
        }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": entrypoint
            or f"python deploy_app.py --config {Path(config_path).name} --dry-run",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": cluster,
        },
    }


@functools.cache
def crd_schema(kind: str) -> dict:
    """The openAPIV3Schema of the CRD's storage version, from KubeRay's own CRD files (read once:
    they are large, and PyYAML's C loader where it is built reads them in a tenth of the time)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    path = CRD_DIR / f"ray.io_{kind.lower()}s.yaml"
    document = yaml.load(path.read_text(), Loader=loader)
    version = next(v for v in document["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]


def validate(manifest: dict) -> list[str]:
    """Schema violations of ``manifest`` against its KubeRay CRD; empty when valid."""
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(manifest["kind"]))
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def _with_yaml_gcs_redis(lock: Lockdown, loaded: dict[str, LoadedConfig]) -> Lockdown:
    """``lock`` with the Redis of the platform's ``gcs_fault_tolerance:`` unless the flags named
    one (the flags win)."""
    asked = [c.platform.gcs_fault_tolerance for c in loaded.values()]
    yaml_redis = next((redis for redis in asked if redis is not None), None)
    if lock.gcs_redis_address or yaml_redis is None:
        return lock
    return dataclasses.replace(
        lock,
        gcs_redis_address=yaml_redis.redis_address,
        gcs_redis_password_secret=yaml_redis.redis_password_secret,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy_app.py kuberay", description=__doc__.splitlines()[0]
    )
    parser.add_argument("kind", choices=["rayservice", "rayjob"])
    parser.add_argument("--config", default=default_config_file())
    parser.add_argument(
        "--image",
        default=None,
        help="the image the Dockerfile builds, pushed to a registry the cluster reaches (default: "
        f"the tag scripts/build_image.sh gives it, {IMAGE_REPOSITORY}:gpu or :cpu by the models)",
    )
    parser.add_argument("--name", default="rayserve-platform")
    parser.add_argument("--entrypoint", help="rayjob: the command to run")
    parser.add_argument("--cpus-per-worker", type=int, default=8)
    parser.add_argument(
        "--gpus-per-worker",
        type=int,
        default=None,
        help="default: the most GPUs one replica needs on one node (at least 1)",
    )
    parser.add_argument("--memory-per-worker", default="32Gi")
    parser.add_argument("--api-keys-secret", default="rayserve-platform-keys")
    parser.add_argument(
        "--job-serves",
        action="store_true",
        help="rayjob: the job serves the platform, so its containers get the API keys",
    )
    parser.add_argument(
        "--ray-token-secret",
        default=None,
        help="the Secret (key auth_token) with Ray's auth token (default: NAME-ray-token)",
    )
    parser.add_argument(
        "--metrics-namespace",
        default="monitoring",
        help="the namespace whose pods may scrape Ray's metrics port ('': none)",
    )
    parser.add_argument(
        "--gcs-redis-address",
        default=None,
        help="host:port of a Redis for the head's GCS state (GCS fault tolerance: a restarted "
        "head recovers the applications)",
    )
    parser.add_argument(
        "--gcs-redis-password-secret", default=None, help="the Secret (key password) of that Redis"
    )
    args = parser.parse_args(argv)
    lock = Lockdown(
        args.ray_token_secret or f"{args.name}-ray-token",
        args.metrics_namespace or None,
        args.gcs_redis_address,
        args.gcs_redis_password_secret,
    )
    shape = WorkerShape(args.cpus_per_worker, args.gpus_per_worker, args.memory_per_worker)
    try:
        manifest = render(
            args.kind,
            args.config,
            args.image,
            args.name,
            shape,
            args.entrypoint,
            args.api_keys_secret,
            lock,
            args.job_serves,
        )
    except ValueError as err:  # an invalid config, or workers too small for a replica
        print(f"{args.config}: {err}", file=sys.stderr)
        return 1
    problems = validate(manifest)
    if problems:
        print(
            "the rendered manifest does not fit KubeRay's CRD:\n  " + "\n  ".join(problems),
            file=sys.stderr,
        )
        return 1
    yaml.safe_dump(manifest, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
