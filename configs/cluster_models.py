"""What the platform asks of the Ray cluster it runs on, read only where a cluster is made
(``deploy_app.py kuberay``): ``gcs_fault_tolerance:`` in the platform's args."""

from __future__ import annotations

from pydantic import Field

from common.base_pydantic import StrictModel


class GcsFaultToleranceConfig(StrictModel):
    """The head's GCS state in an external Redis: a head that restarts recovers the cluster's
    applications, and the workers' replicas keep serving while it is down (KubeRay's
    ``gcsFaultToleranceOptions``)."""

    redis_address: str = Field(
        pattern=r"^(redis://|rediss://)?[A-Za-z0-9][A-Za-z0-9.\-]*:[0-9]{1,5}$",
        description="host:port of the Redis (reachable from the head pod)",
    )
    redis_password_secret: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([a-z0-9.\-]*[a-z0-9])?$",
        description="the Kubernetes Secret whose key 'password' holds the Redis password",
    )
