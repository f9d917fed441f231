"""The RayCluster's control plane locked (``builders/kuberay.py``): Ray's token auth on, with the
token from a Secret; a NetworkPolicy that admits from outside the cluster's own pods only the
serving port (and Ray's metrics port from the monitoring namespace); the head's GCS state in an
external Redis when asked, so a head that restarts recovers the applications.

Without these, any pod that reaches the head can submit a Ray job (which reads every key from the
environment) or call an engine's replica directly, past the platform's keys and limits. KubeRay's
operator reaches the dashboard in every mode, and pod-to-pod traffic inside the RayCluster
(GCS, raylets, object transfers, Serve's calls between replicas) stays open.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

SERVE_PORT = 8000
RAY_METRICS_PORT = 8080  # KubeRay's default --metrics-export-port, which Prometheus scrapes
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


@dataclass(frozen=True)
class Lockdown:
    ray_token_secret: str  # a Secret with the key auth_token (KubeRay makes none when named)
    metrics_namespace: str | None = "monitoring"  # may scrape the metrics port; None: no one
    gcs_redis_address: str | None = None  # host:port of the Redis that holds the GCS state
    gcs_redis_password_secret: str | None = None  # a Secret with the key "password"


def auth_options(lock: Lockdown) -> dict:
    """Ray's token auth: KubeRay sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in every Ray container."""
    return {"mode": "token", "secretName": lock.ray_token_secret}


def network_policy(lock: Lockdown) -> dict:
    """Inbound traffic denied but for the serving port (every node runs a proxy on it) and the
    metrics port from ``metrics_namespace``; outbound left open (model downloads, cloud storage)."""
    rules: list[dict] = [{"ports": [{"port": SERVE_PORT, "protocol": "TCP"}]}]
    if lock.metrics_namespace:
        scraper = {"matchLabels": {NAMESPACE_LABEL: lock.metrics_namespace}}
        rules.append(
            {
                "from": [{"namespaceSelector": scraper}],
                "ports": [{"port": RAY_METRICS_PORT, "protocol": "TCP"}],
            }
        )
    # Copies: PyYAML writes an object met twice as an anchor and an alias.
    return {
        "mode": "DenyAllIngress",
        "head": {"ingressRules": rules},
        "worker": {"ingressRules": copy.deepcopy(rules)},
    }


def gcs_fault_tolerance(lock: Lockdown) -> dict | None:
    """The head's GCS state in an external Redis, or None when none is named."""
    if not lock.gcs_redis_address:
        return None
    options: dict = {"redisAddress": lock.gcs_redis_address}
    if lock.gcs_redis_password_secret:
        ref = {"name": lock.gcs_redis_password_secret, "key": "password"}
        options["redisPassword"] = {"valueFrom": {"secretKeyRef": ref}}
    return options


def locked(cluster: dict, lock: Lockdown) -> dict:
    """``cluster`` (a RayCluster spec) with the settings above."""
    spec = {**cluster, "authOptions": auth_options(lock), "networkPolicy": network_policy(lock)}
    if ft := gcs_fault_tolerance(lock):
        spec["gcsFaultToleranceOptions"] = ft
    return spec
