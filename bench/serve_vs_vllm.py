"""Streaming throughput and latency: this platform against plain ``vllm serve``, same model.

Both servers serve the same model with the same engine arguments, one after the other
on this machine, and are driven by vLLM's own load generator (the code behind
``vllm bench serve``: random prompts, streamed chat completions, fixed seed) at each
concurrency. Prints output-token throughput, TTFT and inter-token latency (p50/p99) of
both and the platform/vLLM throughput ratio, all measured in this one run.

    python bench/serve_vs_vllm.py [--concurrency 1 16 64] [--model-dir .models/tiny-chat]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from launch import ROOT, start_platform, stop, wait_ready

ENGINE_KWARGS = {"max_model_len": 1024, "max_num_seqs": 64,
                 "kv_cache_memory_bytes": 256 << 20, "dtype": "float32"}
METRICS = ("output_throughput", "p50_ttft_ms", "p99_ttft_ms", "p50_itl_ms", "p99_itl_ms")


def cpu_by_process(root_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's process tree, grouped by process title."""
    totals: dict[str, float] = {}
    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return totals
    for proc in procs:
        try:
            name = " ".join(proc.cmdline()[:1]).split("/")[-1][:40] or proc.name()
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        group = name.split(".")[0] if name.startswith("ray::") else name
        totals[group] = totals.get(group, 0.0) + times.user + times.system
    return totals


def run_load(port: int, model: str, tokenizer: str, concurrency: int, prompts: int, args) -> dict:
    """One ``vllm bench serve`` pass, in a child process so each pass starts clean."""
    cli = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--host", "127.0.0.1",
           "--port", str(port), "--model", model, "--tokenizer", tokenizer,
           "--dataset-name", "random", "--random-input-len", str(args.input_len),
           "--random-output-len", str(args.output_len), "--ignore-eos", "--num-prompts", str(prompts),
           "--max-concurrency", str(concurrency), "--seed", str(args.seed), "--disable-tqdm",
           "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", args.result_dir, "--result-filename", "pass.json"]
    code = ("import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
            "from vllm.benchmarks.serve import add_cli_args, main; p = FlexibleArgumentParser(); "
            "add_cli_args(p); main(p.parse_args(sys.argv[1:]))")
    subprocess.run([sys.executable, "-c", code, *cli], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = json.loads((Path(args.result_dir) / "pass.json").read_text())
    return {k: result[k] for k in METRICS}


def start_vllm(model_dir: str, port: int) -> subprocess.Popen:
    flags = []
    for key, value in ENGINE_KWARGS.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
         "--served-model-name", "bench-model", "--host", "127.0.0.1", "--port", str(port),
         "--disable-log-stats", "--disable-uvicorn-access-log", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def start_bench_platform(model_dir: str, port: int, workdir: str) -> subprocess.Popen:
    return start_platform([{
        "model_loading_config": {"model_id": "bench-model", "model_source": model_dir, "type": "vllm"},
        "engine_kwargs": ENGINE_KWARGS,
    }], port, workdir)


def measure(name: str, proc: subprocess.Popen, ready_url: str, port: int, args) -> dict[int, dict]:
    results = {}
    try:
        wait_ready(ready_url, proc)
        run_load(port, "bench-model", args.model_dir, 4, 8, args)  # warm-up
        for concurrency in args.concurrency:
            prompts = max(args.min_prompts, concurrency * args.prompts_per_slot)
            before = cpu_by_process(proc.pid)
            results[concurrency] = run_load(port, "bench-model", args.model_dir, concurrency, prompts, args)
            after = cpu_by_process(proc.pid)
            tokens = prompts * args.output_len
            used = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0.05}
            results[concurrency]["server_cpu_ms_per_token"] = 1000 * sum(used.values()) / tokens
            top = sorted(used.items(), key=lambda kv: -kv[1])[:6]
            print(f"{name} c={concurrency}: {results[concurrency]}", flush=True)
            print("   server CPU ms per output token by process: "
                  + ", ".join(f"{k} {1000 * v / tokens:.2f}" for k, v in top), flush=True)
    finally:
        stop(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(ROOT / ".models" / "tiny-chat"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--min-prompts", type=int, default=32)
    parser.add_argument("--prompts-per-slot", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["vllm", "platform"], default=None)
    parser.add_argument("--skip-warmup", action="store_true")
    args = parser.parse_args()
    args.model_dir = str(Path(args.model_dir).resolve())
    with tempfile.TemporaryDirectory() as workdir:
        args.result_dir = workdir
        runs = {}
        if args.only in (None, "vllm"):
            runs["vllm"] = measure("vllm", start_vllm(args.model_dir, 8100),
                                   "http://127.0.0.1:8100/health", 8100, args)
        if args.only in (None, "platform"):
            runs["platform"] = measure("platform", start_bench_platform(args.model_dir, 8200, workdir),
                                       "http://127.0.0.1:8200/ready", 8200, args)
    print("\n| server | concurrency | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | server CPU ms/token |")
    print("|---|---|---|---|---|---|")
    for name, by_c in runs.items():
        for c, m in by_c.items():
            print(f"| {name} | {c} | {m['output_throughput']:.0f} | {m['p50_ttft_ms']:.0f} / "
                  f"{m['p99_ttft_ms']:.0f} | {m['p50_itl_ms']:.1f} / {m['p99_itl_ms']:.1f} | "
                  f"{m['server_cpu_ms_per_token']:.2f} |")
    if len(runs) == 2:
        for c in args.concurrency:
            ratio = runs["platform"][c]["output_throughput"] / runs["vllm"][c]["output_throughput"]
            print(f"platform / vllm output throughput at concurrency {c}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
