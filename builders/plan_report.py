"""What ``--dry-run`` and ``--plan`` print: one row per model (what serves it, what Ray schedules
for its replicas, the GPU memory each replica holds), and the refusal of a config whose
replicas cannot fit their GPUs' memory."""

from __future__ import annotations

from builders.gpu_memory import ModelMemory, describe_memory, estimate_replica, replica_problems
from common.serve_options import replica_range, replica_shape
from common.text_table import format_table
from configs import LoadedConfig

COLUMNS = (
    "app",
    "deployment",
    "model_id",
    "type",
    "serves",
    "replicas",
    "cpus",
    "gpus",
    "gpu_mem_gib",
    "kv_seqs",
    "max_ongoing",
    "max_queued",
)


def memory_estimates(
    loaded: dict[str, LoadedConfig], gpu_bytes: int | None
) -> dict[str, list[ModelMemory]]:
    """Each deployment's replica memory, per model, on each of its GPUs."""
    return {
        spec.name: estimate_replica(spec, gpu_bytes)
        for config in loaded.values()
        for spec in config.deployments()
    }


def check_memory(
    loaded: dict[str, LoadedConfig], estimates: dict[str, list[ModelMemory]], gpu_bytes: int
) -> list[str]:
    """Why each replica that cannot fit its GPU memory fails (empty: they all fit)."""
    return [
        problem
        for config in loaded.values()
        for spec in config.deployments()
        for problem in replica_problems(spec, estimates[spec.name], gpu_bytes)
    ]


def describe_plan(loaded: dict[str, LoadedConfig], estimates: dict[str, list[ModelMemory]]) -> str:
    rows = [COLUMNS]
    for app_name, config in loaded.items():
        for spec in config.deployments():
            shape = replica_shape(spec.options)
            low, high = replica_range(spec.options)
            replicas = (
                f"{low}-{high} (auto)" if spec.options.get("autoscaling_config") else str(low)
            )
            gpus = f"{shape.gpus:g}" + (
                f" ({len(shape.bundles)} bundles)" if len(shape.bundles) > 1 else ""
            )
            memory = estimates.get(spec.name, [])
            for model in spec.models:
                own = [m for m in memory if m.model_id == model.model_id]
                sequences = own[0].kv_sequences if own and own[0].kv_sequences is not None else None
                rows.append(
                    (
                        app_name,
                        spec.name,
                        model.model_id,
                        model.model_loading_config.type.value,
                        ",".join(c.value for c in model.capabilities()),
                        replicas,
                        f"{shape.cpus:g}",
                        gpus,
                        describe_memory(own),
                        "-" if sequences is None else str(sequences),
                        str(spec.options.get("max_ongoing_requests", 5)),
                        str(spec.options.get("max_queued_requests", -1)),
                    )
                )
        for pipeline in config.platform.pipelines:  # run by the router: no replicas of their own
            steps = " -> ".join(f"{step.task} {step.model}" for step in pipeline.steps)
            rows.append((app_name, "(router)", pipeline.model_id, "pipeline", steps) + ("-",) * 7)
    return format_table(rows)
