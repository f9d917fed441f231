"""``python deploy_app.py batch``: offline inference over a file or a folder with Ray Data, on
the engines the YAML configures (no Serve, no HTTP).

    python deploy_app.py batch --config model_config.yaml --model tiny-chat \\
        --input prompts.jsonl --output answers.jsonl
    python deploy_app.py batch --model all-minilm-l6-v2 --input texts.parquet --output s3://bucket/vectors.parquet
    python deploy_app.py batch --model tiny-whisper --input recordings/ --output transcripts.jsonl
    python deploy_app.py batch --model tiny-vit --input 'photos/*.jpg' --output labels.jsonl

Each model replica of the YAML becomes an actor of Ray Data's pool (its CPUs and GPU share; as
many actors as its replicas, or its autoscaling range); rows stream through them in batches.
A row the model refuses is written with its error; a re-run skips the rows already written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from batch.rows import ID, OutputFile, read_rows, row_id
from batch.usage import DEFAULT_KEY, BatchLedger
from builders.serve_config import default_config_file
from common.serve_options import replica_range, replica_shape
from configs.capabilities import Capability
from configs.server_models import BaseModelEntry

ENDPOINTS = {
    "chat": Capability.CHAT,
    "completions": Capability.COMPLETIONS,
    "embeddings": Capability.EMBEDDINGS,
    "transcriptions": Capability.TRANSCRIPTION,
    "translations": Capability.TRANSLATION,
    "rerank": Capability.RERANK,
    "score": Capability.SCORE,
    "classify": Capability.CLASSIFY,
}
FLUSH_ROWS = 64  # rows per write: what a crash can lose, and what a re-run redoes


def batch_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy_app.py batch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", default=default_config_file())
    parser.add_argument("--model", required=True, help="a model_id of the config")
    parser.add_argument(
        "--input",
        required=True,
        help=".jsonl or .parquet records, or a folder/glob of media files (local, s3://, gs://)",
    )
    parser.add_argument(
        "--output", required=True, help=".jsonl or .parquet (a folder of parts on cloud storage)"
    )
    parser.add_argument(
        "--endpoint",
        choices=sorted(ENDPOINTS),
        default=None,
        help="what each row asks of the model (default: the model's first capability)",
    )
    parser.add_argument(
        "--parameters",
        type=json.loads,
        default={},
        help="JSON merged into every request (max_tokens, top_k, ...)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows per actor call (default: from the YAML)"
    )
    parser.add_argument(
        "--address", default=None, help="a Ray cluster to run on (default: start one here)"
    )
    parser.add_argument(
        "--usage-key",
        default=DEFAULT_KEY,
        help="the key name the job's rows are recorded under in the usage ledger, when the "
        f"config names a usage database (default: {DEFAULT_KEY})",
    )
    args = parser.parse_args(argv)

    from builders.serve_config import load_serve_config  # the same validation a deploy gets

    _, loaded = load_serve_config(args.config)
    # The model's deployment (its group's, for a grouped model) sizes the actors.
    entry, options, usage_url = next(
        (
            (m, spec.options, config.platform.usage.database)
            for config in loaded.values()
            for spec in config.deployments()
            for m in spec.models
            if m.model_id == args.model
        ),
        (None, {}, None),
    )
    if entry is None:
        known = sorted(m.model_id for config in loaded.values() for m in config.models)
        print(
            f"{args.config}: no model {args.model!r}; models: {', '.join(known)}", file=sys.stderr
        )
        return 2
    source = entry.model_loading_config.model_source
    if source.startswith(("./", "../")):  # the actors may not share this directory
        entry.model_loading_config.model_source = os.path.abspath(source)
    capability = ENDPOINTS[args.endpoint] if args.endpoint else entry.capabilities()[0]
    if capability not in entry.capabilities():
        print(
            f"{args.model!r} cannot serve {capability.value}; it serves "
            f"{', '.join(c.value for c in entry.capabilities())}",
            file=sys.stderr,
        )
        return 2
    ledger = BatchLedger(usage_url, args.usage_key, entry.model_id) if usage_url else None
    try:
        return run_batch(entry, options, capability, args, ledger)
    finally:
        if ledger is not None:
            ledger.close()


def run_batch(
    entry: BaseModelEntry,
    options: dict[str, Any],
    capability: Capability,
    args: argparse.Namespace,
    ledger: BatchLedger | None = None,
) -> int:
    import ray

    from common.local_ray import forget_dead_cluster

    if args.address is None:
        forget_dead_cluster()
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    output = OutputFile(args.output)
    done = output.finished_ids()
    rows = read_rows(args.input, capability).map(lambda row: {**row, ID: row_id(row)})
    if done:
        rows = rows.filter(lambda row: row[ID] not in done)
    started, answered, failed, busy = (
        time.perf_counter(),
        0,
        0,
        0.0,
    )  # busy: the actors' seconds answering
    pending: list[dict[str, Any]] = []
    with _progress(args.input) as progress:
        for batch in _answered(rows, entry, options, capability, args):
            busy += float(sum(batch["seconds"]))
            if ledger is not None:
                for spending, seconds in zip(batch["spent"], batch["seconds"], strict=True):
                    ledger.record(str(spending), float(seconds))
            for identifier, result in zip(batch[ID], batch["result"], strict=True):
                record = {ID: str(identifier), **json.loads(result)}
                failed += "error" in record
                answered += "error" not in record
                pending.append(record)
            if len(pending) >= FLUSH_ROWS:
                output.write(pending)
                pending = []
            progress.update(len(batch[ID]))
    output.write(pending)
    ended = time.perf_counter()
    total = answered + failed
    loaded = f"; {total / busy:.2f} rows/s per actor while answering" if busy else ""
    print(
        f"batch: {total} rows in {ended - started:.1f} s "
        f"({total / (ended - started):.2f} rows/s{loaded}): "
        f"{answered} answered, {failed} with an error; {len(done)} already in {args.output}"
    )
    return 0


def _answered(
    rows,
    entry: BaseModelEntry,
    options: dict[str, Any],
    capability: Capability,
    args: argparse.Namespace,
):
    """The rows through a pool of engine actors sized like the model's replicas (Serve
    ``options``)."""
    from batch.engine_actor import EngineActor

    shape = replica_shape(options)
    low, high = replica_range(options)
    batch_size = args.batch_size or max(1, min(options.get("max_ongoing_requests", 16), 256))
    answered = rows.map_batches(
        EngineActor,
        fn_constructor_kwargs={
            "entry": entry,
            "capability": capability.value,
            "parameters": args.parameters,
        },
        batch_size=batch_size,
        concurrency=(max(low, 1), max(high, 1)),
        num_cpus=shape.cpus or 0.001,
        num_gpus=shape.gpus or 0,
        # one per node where they fit, as Serve spreads a model's replicas: Ray's default packs
        # a node before it uses the next, leaving the others' CPUs and GPUs idle
        scheduling_strategy="SPREAD",
    )
    return answered.iter_batches(batch_size=None, batch_format="numpy")


def _progress(label: str):
    from tqdm import tqdm

    return tqdm(desc=f"batch {label}", unit=" rows", smoothing=0.1, file=sys.stderr)
