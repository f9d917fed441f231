"""Streaming throughput and latency: this platform against plain ``vllm serve`` and Ray Serve LLM.

Every arm serves the same model with the same engine arguments (vLLM's engine statistics on in
each, as each keeps them by default: ``vllm serve``'s Prometheus metrics, Ray Serve LLM's and the
platform's through Ray's metrics), one after the other on this machine, driven by vLLM's own load
generator (the code behind ``vllm bench serve``: random prompts, streamed chat completions, fixed
seed) at each concurrency:

- ``vllm``: vLLM's OpenAI server, bare;
- ``vllm-uni``: the same server with the platform's arrangement of processes: the worker runs
  inside vLLM's engine core (``uni`` executor, with the OpenMP binding vLLM gives its worker set
  while the engine core starts), as the one-shard CPU replicas do
  (``servers/vllm_cpu_placement.py``), where ``vllm serve`` on the CPU runs a worker process of
  its own: the fair limit for the platform's paths;
- ``one-hop``: the platform's per-model URL ``/models/<model_id>/v1`` (HAProxy -> the engine
  replica's own vLLM server);
- ``shared``: the platform's ``/v1`` (HAProxy -> MultiModelRouter -> engine replica), same platform;
- ``rsllm``: Ray Serve LLM's ``build_openai_app`` with its defaults;
- ``rsllm-direct``: Ray Serve LLM with direct streaming (``RAY_SERVE_ENABLE_HA_PROXY=1
  RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1``; needs ``pandas`` and ``jsonref``);
- ``vllm-lora`` and ``one-hop-lora`` (not run unless named): the same with tiny-chat's two LoRA
  adapters, every request for ``bench-model:sql``: bare vLLM with ``--lora-modules``, and the
  per-model URL of a platform whose model has them as variants, where HAProxy asks the model's
  ``VariantRouter`` for a replica on every request. Their ratio lines compare to ``vllm-lora``.

Prints output-token throughput, TTFT and inter-token latency (p50/p99), the server's CPU ms per
output token by process, and one line per arm and concurrency, which scripts read:
``ratio <arm> / vllm at concurrency <c>: <x.xx>x`` (``/ vllm-lora`` for the LoRA arms), and
``ratio <arm> / vllm-uni at concurrency <c>: <x.xx>x`` when ``vllm-uni`` ran. With
``--rounds N`` every arm runs N times, in turn (vllm, one-hop, ..., vllm, one-hop, ...); each
round's ratios compare arms of that round, and the ``ratio`` line gives their median: on a small
shared machine the speed of the machine itself drifts between minutes by more than the gaps being
measured.

    python bench/serve_vs_vllm.py [--concurrency 1 16 64] \\
        [--arms vllm vllm-uni one-hop shared rsllm rsllm-direct] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from launch import ROOT, start_platform, stop, wait_ready

ENGINE_KWARGS = {
    "max_model_len": 1024,
    "max_num_seqs": 64,
    "kv_cache_memory_bytes": 256 << 20,
    "dtype": "float32",
}
ADAPTERS = ROOT / ".models" / "tiny-chat-adapters"  # built by scripts/install.sh for tiny-chat
LORA_MODEL = "bench-model:sql"
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


def wait_idle(
    root_pid: int, busy_cores: float = 0.25, window_s: float = 3.0, timeout_s: float = 60.0
) -> float:
    """Wait until the server's processes use less than ``busy_cores`` of CPU over a window: a
    freshly started Ray keeps its agents busy for a while after the app is ready (an idle platform
    uses about 0.16 cores here, Serve's controller the most); seconds waited."""
    started = time.monotonic()
    used = sum(cpu_by_process(root_pid).values())
    while time.monotonic() - started < timeout_s:
        time.sleep(window_s)
        before, used = (
            used,
            sum(cpu_by_process(root_pid).values()),
        )  # one walk of the tree per window
        if used - before < busy_cores * window_s:
            break
    return time.monotonic() - started


# The load generator's own lines: when its main run starts, and its result.
MAIN_RUN_STARTS, MAIN_RUN_ENDED = "Starting main benchmark run", " Serving Benchmark Result "


def run_load(
    port: int,
    endpoint: str,
    model: str,
    tokenizer: str,
    concurrency: int,
    prompts: int,
    args,
    sample: Callable[[], dict] | None = None,
    dataset: list[str] | None = None,
) -> dict:
    """One ``vllm bench serve`` pass, in a child process so each pass starts clean. With ``sample``,
    ``metrics["samples"]`` holds what it returned as the main run started and as it ended: the
    child's own start (importing vLLM, building prompts, a test request) takes seconds, and the
    server's background work over them is not the pass's. ``dataset``: the load generator's
    dataset arguments (default: random prompts of ``args.input_len``, ``args.output_len``)."""
    if dataset is None:
        dataset = [
            "--dataset-name",
            "random",
            "--random-input-len",
            str(args.input_len),
            "--random-output-len",
            str(args.output_len),
        ]
    cli = [
        "--backend",
        "openai-chat",
        "--endpoint",
        endpoint,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        model,
        "--tokenizer",
        tokenizer,
        *dataset,
        "--ignore-eos",
        "--num-prompts",
        str(prompts),
        "--max-concurrency",
        str(concurrency),
        "--seed",
        str(args.seed),
        "--disable-tqdm",
        "--percentile-metrics",
        "ttft,tpot,itl",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        args.result_dir,
        "--result-filename",
        "pass.json",
    ]
    code = (
        "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
        "from vllm.benchmarks.serve import add_cli_args, main; p = FlexibleArgumentParser(); "
        "add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, *cli],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    samples = []
    for (
        line
    ) in child.stdout:  # the load generator's own lines: when its main run starts, and its result
        if sample is not None and (line.startswith(MAIN_RUN_STARTS) or MAIN_RUN_ENDED in line):
            samples.append(sample())
    if child.wait() != 0:
        raise subprocess.CalledProcessError(child.returncode, "vllm bench serve")
    if sample is not None and len(samples) != 2:
        raise RuntimeError(
            f"vllm bench serve printed no {MAIN_RUN_STARTS!r} and {MAIN_RUN_ENDED!r} lines"
        )
    result = json.loads((Path(args.result_dir) / "pass.json").read_text())
    return {
        **{k: result[k] for k in METRICS},
        **({"samples": samples} if sample is not None else {}),
    }


# vLLM's OpenAI server with its worker inside the engine core, started as
# servers/vllm_cpu_placement.py:worker_inside_engine_core starts a replica's engine.
VLLM_UNI = """
from vllm.entrypoints.launchers.api_server.entry import main
from vllm.utils.ompmultiprocessing import OMPProcessManager
from vllm.v1.engine.async_llm import AsyncLLM
from_vllm_config = AsyncLLM.from_vllm_config.__func__
def worker_inside_engine_core(cls, vllm_config, *args, **kwargs):
    vllm_config.parallel_config.distributed_executor_backend = "uni"
    with OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0):
        return from_vllm_config(cls, vllm_config, *args, **kwargs)
AsyncLLM.from_vllm_config = classmethod(worker_inside_engine_core)
main()
"""


def start_vllm(
    model_dir: str, port: int, lora: bool = False, uni: bool = False
) -> subprocess.Popen:
    """``vllm serve`` as it runs by default: it keeps its engine statistics (``/metrics``), as every
    other arm does; without them it runs up to a tenth faster at 64 streams here
    (bench/README.md). With ``uni``, its worker runs inside the engine core (``VLLM_UNI``)."""
    flags = []
    for key, value in ENGINE_KWARGS.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    if lora:  # what the platform derives from its multiplex_config (configs/vllm_models.py)
        flags += [
            "--enable-lora",
            "--max-loras",
            "2",
            "--max-cpu-loras",
            "2",
            "--lora-modules",
            *(f"bench-model:{a.name}={a}" for a in sorted(ADAPTERS.iterdir())),
        ]
    server = ["-c", VLLM_UNI] if uni else ["-m", "vllm.entrypoints.openai.api_server"]
    return subprocess.Popen(
        [
            sys.executable,
            *server,
            "--model",
            model_dir,
            "--served-model-name",
            "bench-model",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-uvicorn-access-log",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def start_bench_platform(
    model_dir: str, port: int, workdir: str, lora: bool = False
) -> subprocess.Popen:
    model = {
        "model_loading_config": {
            "model_id": "bench-model",
            "model_source": model_dir,
            "type": "vllm",
        },
        "deployment_config": {"ray_actor_options": {"num_cpus": 0}},
        "engine_kwargs": ENGINE_KWARGS,
    }
    if lora:
        model["multiplex_config"] = {"variants_dir": str(ADAPTERS), "max_variants_per_replica": 2}
    return start_platform([model], port, workdir)


RAY_SERVE_LLM = """
import sys, time
import ray
from ray import serve
from ray.serve.llm import LLMConfig, build_openai_app
direct, model_dir = sys.argv[1] == "1", sys.argv[2]
port, engine_kwargs = int(sys.argv[3]), eval(sys.argv[4])
ray.init(include_dashboard=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
llm = LLMConfig(model_loading_config={"model_id": "bench-model", "model_source": model_dir},
                engine_kwargs=engine_kwargs, placement_group_config={"bundles": [{"CPU": 1}]},
                deployment_config={"ray_actor_options": {"num_cpus": 0},
                                   "max_ongoing_requests": 256})
app_config = {"llm_configs": [llm]}
if not direct:  # direct streaming refuses an ingress config: the LLM server is the ingress
    app_config["ingress_deployment_config"] = {"ray_actor_options": {"num_cpus": 0}}
serve.run(build_openai_app(app_config), blocking=False)
while True:
    time.sleep(3600)
"""


def start_ray_serve_llm(model_dir: str, port: int, direct: bool) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_worker_niceness": "0",
    }
    if direct:
        env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1")
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            RAY_SERVE_LLM,
            "1" if direct else "0",
            model_dir,
            str(port),
            repr(ENGINE_KWARGS),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


def measure(
    proc: subprocess.Popen,
    ready_url: str,
    port: int,
    endpoints: dict[str, str],
    args,
    model: str = "bench-model",
) -> dict:
    """Each arm (name -> chat endpoint path) of one server at each concurrency:
    {arm: {c: metrics}}."""
    results: dict[str, dict[int, dict]] = {arm: {} for arm in endpoints}
    try:
        wait_ready(ready_url, proc, timeout_s=600)
        for arm, endpoint in endpoints.items():
            run_load(port, endpoint, model, args.model_dir, 4, 8, args)  # warm-up
            for concurrency in args.concurrency:
                print(
                    f"{arm} c={concurrency}: server idle after {wait_idle(proc.pid):.0f} s",
                    flush=True,
                )
                prompts = max(args.min_prompts, concurrency * args.prompts_per_slot)
                metrics = run_load(
                    port,
                    endpoint,
                    model,
                    args.model_dir,
                    concurrency,
                    prompts,
                    args,
                    sample=lambda: cpu_by_process(proc.pid),
                )
                before, after = metrics.pop("samples")
                tokens = prompts * args.output_len
                used = {
                    k: after[k] - before.get(k, 0.0)
                    for k in after
                    if after[k] - before.get(k, 0.0) > 0.05
                }
                metrics["server_cpu_ms_per_token"] = 1000 * sum(used.values()) / tokens
                results[arm][concurrency] = metrics
                top = sorted(used.items(), key=lambda kv: -kv[1])[:6]
                print(f"{arm} c={concurrency}: {metrics}", flush=True)
                print(
                    "   server CPU ms per output token by process: "
                    + ", ".join(f"{k} {1000 * v / tokens:.2f}" for k, v in top),
                    flush=True,
                )
    finally:
        stop(proc)
    return results


CHAT = "/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(ROOT / ".models" / "tiny-chat"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--min-prompts", type=int, default=32)
    parser.add_argument("--prompts-per-slot", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["vllm", "vllm-uni", "one-hop", "shared", "rsllm", "rsllm-direct"],
        choices=[
            "vllm",
            "vllm-uni",
            "one-hop",
            "shared",
            "rsllm",
            "rsllm-direct",
            "vllm-lora",
            "one-hop-lora",
        ],
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every arm this many times, in turn; the ratio lines give the median",
    )
    args = parser.parse_args()
    args.model_dir = str(Path(args.model_dir).resolve())
    rounds = []
    with tempfile.TemporaryDirectory() as workdir:
        args.result_dir = workdir
        for _ in range(args.rounds):
            rounds.append(run_round(args, workdir))
    print(
        "\n| server | concurrency | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms "
        "| server CPU ms/token |"
    )
    print("|---|---|---|---|---|---|")
    for number, runs in enumerate(rounds, 1):
        for name, by_c in runs.items():
            for c, m in by_c.items():
                label = name if args.rounds == 1 else f"{name} (round {number})"
                print(
                    f"| {label} | {c} | {m['output_throughput']:.0f} | {m['p50_ttft_ms']:.0f} / "
                    f"{m['p99_ttft_ms']:.0f} | {m['p50_itl_ms']:.1f} / {m['p99_itl_ms']:.1f} | "
                    f"{m['server_cpu_ms_per_token']:.2f} |"
                )
    for arm in args.arms:
        bases = ["vllm-lora"] if arm.endswith("-lora") else ["vllm", "vllm-uni"]
        for base in bases:
            if arm != base and base in args.arms:
                print_ratios(arm, base, rounds, args)


def print_ratios(arm: str, base: str, rounds: list[dict[str, dict[int, dict]]], args) -> None:
    """The ``ratio <arm> / <base>`` line at each concurrency: the median over the rounds."""
    for c in args.concurrency:
        ratios = [
            runs[arm][c]["output_throughput"] / runs[base][c]["output_throughput"]
            for runs in rounds
        ]
        if args.rounds > 1:
            print(
                f"rounds of {arm} / {base} at concurrency {c}: "
                + ", ".join(f"{r:.2f}x" for r in ratios)
            )
        print(f"ratio {arm} / {base} at concurrency {c}: {statistics.median(ratios):.2f}x")


def run_round(args, workdir: str) -> dict[str, dict[int, dict]]:
    """Every arm once, one after the other: {arm: {concurrency: metrics}}."""
    runs: dict[str, dict[int, dict]] = {}
    for arm in ("vllm", "vllm-uni"):
        if arm in args.arms:
            runs.update(
                measure(
                    start_vllm(args.model_dir, 8100, uni=arm == "vllm-uni"),
                    "http://127.0.0.1:8100/health",
                    8100,
                    {arm: CHAT},
                    args,
                )
            )
    platform_arms = {
        arm: endpoint
        for arm, endpoint in (("one-hop", "/models/bench-model" + CHAT), ("shared", CHAT))
        if arm in args.arms
    }
    if platform_arms:
        runs.update(
            measure(
                start_bench_platform(args.model_dir, 8200, workdir),
                "http://127.0.0.1:8200/ready",
                8200,
                platform_arms,
                args,
            )
        )
    for arm, direct in (("rsllm", False), ("rsllm-direct", True)):
        if arm in args.arms:
            runs.update(
                measure(
                    start_ray_serve_llm(args.model_dir, 8300, direct),
                    "http://127.0.0.1:8300/v1/models",
                    8300,
                    {arm: CHAT},
                    args,
                )
            )
    if "vllm-lora" in args.arms:
        runs.update(
            measure(
                start_vllm(args.model_dir, 8100, lora=True),
                "http://127.0.0.1:8100/health",
                8100,
                {"vllm-lora": CHAT},
                args,
                model=LORA_MODEL,
            )
        )
    if "one-hop-lora" in args.arms:
        runs.update(
            measure(
                start_bench_platform(args.model_dir, 8200, workdir, lora=True),
                "http://127.0.0.1:8200/ready",
                8200,
                {"one-hop-lora": "/models/bench-model" + CHAT},
                args,
                model=LORA_MODEL,
            )
        )
    return runs


if __name__ == "__main__":
    main()
