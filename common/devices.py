"""Which accelerator Ray gave this replica, and the torch device and dtype that follow."""

from __future__ import annotations

import os


def assigned_gpu_ids() -> list:
    """GPU ids Ray assigned to the current replica (fractional shares count as one)."""
    import ray

    return ray.get_gpu_ids() if ray.is_initialized() else []


def torch_device() -> str:
    """``cuda`` when Ray gave this replica a GPU (whole or a share) and torch sees it, else ``cpu``.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned GPU, so index 0 is always the right one.
    """
    import torch

    return "cuda:0" if assigned_gpu_ids() and torch.cuda.is_available() else "cpu"


def torch_dtype(name: str, device: str):
    """``auto`` is float16 on a GPU (half the memory of float32) and float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def replica_placement() -> dict:
    """What Ray reserved for this replica: node, GPU ids, and its placement group's bundles."""
    import ray
    from ray.util.placement_group import get_current_placement_group, placement_group_table

    context = ray.get_runtime_context()
    placement = {
        "node_id": context.get_node_id(),
        "actor_id": context.get_actor_id(),
        "pid": os.getpid(),
        "gpu_ids": [str(gpu) for gpu in assigned_gpu_ids()],
        "gpu_share": context.get_assigned_resources().get("GPU", 0),
    }  # 0.5: half a GPU
    group = get_current_placement_group()
    if group is not None:
        table = placement_group_table(group)
        placement["placement_group"] = {
            "strategy": table["strategy"],
            "bundles": list(table["bundles"].values()),
            "bundle_nodes": list(table["bundles_to_node_id"].values()),
        }
    return placement
