"""The Ray that a command starts on this machine when given no ``--address``."""

from __future__ import annotations

import sys


def forget_dead_cluster() -> None:
    """Given no address, Ray joins the cluster named in ``<ray temp>/ray_current_cluster``, and
    waits for it forever when it is gone: a platform killed without its shutdown (SIGKILL, a reboot)
    leaves that file. Drop it unless a Ray process on this machine still serves that address."""
    from ray._common.utils import reset_ray_address
    from ray._private import services

    recorded = services.find_bootstrap_address(None)
    if recorded is not None and recorded not in services.find_gcs_addresses():
        print(
            f"ignoring {recorded}, the Ray cluster this machine last ran: it is gone",
            file=sys.stderr,
        )
        reset_ray_address()
