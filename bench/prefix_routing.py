"""Routing by prompt prefix against the default pick: two replicas of one chat model.

Arms, one platform each, one after the other: ``default`` (Serve's pick: the shorter queue of two
replicas drawn at random) and ``prefix-affinity`` (``routing: prefix_affinity``: Ray Serve LLM's
``PrefixCacheAffinityRouter``). Each is driven by vLLM's own load generator (the code behind
``vllm bench serve``, streamed chat completions) with its prefix-repetition dataset (a few shared
prefixes of ``--prefix-len`` tokens, short suffixes) and, as a control, its random dataset, at
each concurrency, on each path: ``shared`` (``/v1``, through the router, where the request router
applies) and ``one-hop`` (``/models/<model_id>/v1``: HAProxy picks the replica by least
connections in the default arm, and asks the model's ingress request router in the other, which
hands the prompt to the same request router: the prefix tree is the model's, shared by both
paths). Every pass draws prompts with a seed of its own, so no pass finds
its prefixes cached by the one before. vLLM's prefix-cache hit rate over each pass is read from
the replicas' metrics (Ray's metrics export, summed over the replicas).

Ends with one line per dataset, path and concurrency, which scripts read:
``ratio prefix-affinity / default <dataset> <path> at concurrency <c>: ttft-p50 <x.xx>x tokens/s
<y.yy>x``.

    python bench/prefix_routing.py [--concurrency 4 16 32] [--paths shared one-hop] \\
        [--model-dir .models/tiny-chat]
"""

from __future__ import annotations

import argparse
import copy
import re
import tempfile
import time
from pathlib import Path

import httpx
from launch import ROOT, start_platform, stop, wait_ready
from serve_vs_vllm import CHAT, run_load

MODEL = "bench-model"
PORT, METRICS_PORT = 8200, 8290
ARMS = {"default": "default", "prefix-affinity": "prefix_affinity"}
PATHS = {"shared": CHAT, "one-hop": f"/models/{MODEL}{CHAT}"}
# vLLM's prefix-cache counters as Ray's metrics export names them (a replica's each)
PREFIX_CACHE = re.compile(r"^ray_vllm_prefix_cache_(hits|queries)_total\{[^}]*\} (\S+)$", re.M)


def start(arm: str, args, workdir: str):
    model = {
        "model_loading_config": {"model_id": MODEL, "model_source": args.model_dir, "type": "vllm"},
        "deployment_config": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
        "engine_kwargs": {
            "max_model_len": args.prefix_len + args.suffix_len + args.output_len + 64,
            "max_num_seqs": max(args.concurrency),
            "kv_cache_memory_bytes": 256 << 20,
            "dtype": "float32",
        },
        "routing": {"policy": ARMS[arm], "max_imbalance": args.max_imbalance},
    }
    return start_platform(
        [model], PORT, workdir, extra_args=("--metrics-export-port", str(METRICS_PORT))
    )


def prefix_cache_counts() -> dict[str, float]:
    """vLLM's prefix-cache hits and queries (tokens) so far, summed over the replicas."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    counts = {"hits": 0.0, "queries": 0.0}
    for kind, value in PREFIX_CACHE.findall(text):
        counts[kind] += float(value)
    return counts


def datasets(args) -> dict[str, list[str]]:
    return {
        "prefix": [
            "--dataset-name",
            "prefix_repetition",
            "--prefix-repetition-prefix-len",
            str(args.prefix_len),
            "--prefix-repetition-suffix-len",
            str(args.suffix_len),
            "--prefix-repetition-num-prefixes",
            str(args.num_prefixes),
            "--prefix-repetition-output-len",
            str(args.output_len),
        ],
        "random": [
            "--dataset-name",
            "random",
            "--random-input-len",
            str(args.prefix_len + args.suffix_len),
            "--random-output-len",
            str(args.output_len),
        ],
    }


def measure(arm: str, args, workdir: str) -> dict[tuple[str, str, int], dict]:
    """Every pass of one arm: {(dataset, path, concurrency): metrics}."""
    results = {}
    proc = start(arm, args, workdir)
    seeds = iter(range(args.seed, args.seed + 10_000))
    try:
        wait_ready(f"http://127.0.0.1:{PORT}/ready", proc, timeout_s=900)
        for path, endpoint in PATHS.items():
            if path not in args.paths:
                continue
            for dataset, dataset_args in datasets(args).items():
                for concurrency in args.concurrency:
                    pass_args = copy.copy(args)
                    pass_args.seed = next(seeds)
                    before = prefix_cache_counts()
                    metrics = run_load(
                        PORT,
                        endpoint,
                        MODEL,
                        args.model_dir,
                        concurrency,
                        max(args.min_prompts, concurrency * args.prompts_per_slot),
                        pass_args,
                        dataset=dataset_args,
                    )
                    time.sleep(args.metrics_wait_s)  # Ray's metrics reach the export on a period
                    after = prefix_cache_counts()
                    queries = after["queries"] - before["queries"]
                    metrics["prefix_hit_rate"] = (
                        (after["hits"] - before["hits"]) / queries if queries else 0.0
                    )
                    results[(dataset, path, concurrency)] = metrics
                    print(f"{arm} {dataset} {path} c={concurrency}: {metrics}", flush=True)
    finally:
        stop(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(ROOT / ".models" / "tiny-chat"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--prefix-len", type=int, default=512)
    parser.add_argument("--suffix-len", type=int, default=32)
    parser.add_argument("--num-prefixes", type=int, default=8)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--max-imbalance", type=int, default=8)
    parser.add_argument("--min-prompts", type=int, default=32)
    parser.add_argument("--prompts-per-slot", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--metrics-wait-s",
        type=float,
        default=12.0,
        help="wait after each pass before reading the replicas' prefix-cache counters",
    )
    args = parser.parse_args()
    args.model_dir = str(Path(args.model_dir).resolve())
    with tempfile.TemporaryDirectory() as workdir:
        args.result_dir = workdir
        runs = {arm: measure(arm, args, workdir) for arm in ARMS}
    print(
        "\n| arm | dataset | path | concurrency | output tok/s | TTFT p50 / p99 ms "
        "| prefix-cache hit rate |"
    )
    print("|---|---|---|---|---|---|---|")
    for arm, passes in runs.items():
        for (dataset, path, c), m in passes.items():
            print(
                f"| {arm} | {dataset} | {path} | {c} | {m['output_throughput']:.0f} | "
                f"{m['p50_ttft_ms']:.0f} / {m['p99_ttft_ms']:.0f} | {m['prefix_hit_rate']:.2f} |"
            )
    for key, base in runs["default"].items():
        routed = runs["prefix-affinity"][key]
        dataset, path, c = key
        print(
            f"ratio prefix-affinity / default {dataset} {path} at concurrency {c}: "
            f"ttft-p50 {routed['p50_ttft_ms'] / base['p50_ttft_ms']:.2f}x "
            f"tokens/s {routed['output_throughput'] / base['output_throughput']:.2f}x"
        )


if __name__ == "__main__":
    main()
