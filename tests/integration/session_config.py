"""The config of the session platform: ``model_config.yaml`` plus what the integration tests need
of one platform, so that one Ray start serves them all.

Beside the default config's models: keys with scopes and limits, CORS, a small request-size limit,
a media policy, a CTC speech model, the other vision tasks in one group, a classifier with weight
variants, a captioning pipeline; tiny-chat logs its requests (for the request-id test); and, for
adapter affinity, ``affinity-chat`` (tiny-chat on two replicas, one adapter each) and
``cold-chat`` (the same scaled to zero).

To run the integration tests against a platform you started yourself (seconds instead of
minutes per run)::

    .venv/bin/python -m tests.integration.session_config /tmp/session   # prints the two commands
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

from tests.integration.helpers import (
    ADAPTER_KEY,
    ADMIN_KEY,
    ADMIN_KEY_ENTRY,
    ALLOWED_ORIGIN,
    API_KEY,
    BURST_KEY,
    IMAGE_HOST,
    LIMITED_KEY,
    PIPELINE_TOKENS_KEY,
    RESERVE_KEY,
    ROOT,
    SCOPED_KEY,
    TOKEN_KEY,
)

# The session's Ray counts more CPUs than the machine has: the replicas' num_cpus add up to more
# than 2, and batch jobs run their engine actors beside them (each still gets the threads its
# own num_cpus gives it).
NUM_CPUS = 16
# The tests chat with tiny-chat (fast, with LoRA adapters); the default config's real chat model,
# which its pipelines use, answers the tests that need a sensible answer.
CHAT, EMBED, RERANKER = "tiny-chat", "all-minilm-l6-v2", "tiny-reranker"
CHAT_ADAPTER = f"{CHAT}:sql"  # the one model ADAPTER_KEY may use
REAL_CHAT = "smollm2"
AFFINITY_CHAT, COLD_CHAT = "affinity-chat", "cold-chat"
# What the default config's rag-lite pipeline is asked about, and the documents it ranks: a
# made-up fact the real chat model can only answer from the best-ranked document.
RAG_DOCUMENTS = [
    "The stock market fell sharply today.",
    "The lighthouse keeper of Port Quillan is named Oswin Thrale.",
    "Dogs bark at the mailman.",
]
RAG_QUESTION = "Who is the lighthouse keeper of Port Quillan?"

# A CTC speech-to-text model beside the default config's Whisper, with small limits to test 413s.
CTC_MODEL = {
    "model_loading_config": {
        "model_id": "tiny-ctc",
        "model_source": "./.models/tiny-wav2vec2",
        "type": "audio",
    },
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.25}},
    "engine_kwargs": {
        "task": "speech-to-text",
        "max_audio_bytes": 1024 * 1024,
        "max_audio_duration_s": 60,
        "max_batch_size": 4,
    },
}


def _vision(model_id: str, source: str, **engine_kwargs) -> dict:
    return {
        "model_loading_config": {
            "model_id": model_id,
            "model_source": f"./.models/{source}",
            "type": "vision",
        },
        "deployment_config": {"ray_actor_options": {"num_cpus": 0.05}},
        "engine_kwargs": engine_kwargs,
    }


# The other vision tasks beside the default config's image classifier, co-located: one
# deployment whose replica holds all four.
VISION_GROUP = {
    "name": "vision-extras",
    "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}},
}
VISION_MODELS = [
    {**_vision(model_id, source, **kwargs), "group": VISION_GROUP["name"], "deployment_config": {}}
    for model_id, source, kwargs in [
        ("tiny-detector", "tiny-yolos", {"task": "object-detection", "threshold": 0.0}),
        (
            "tiny-zero-shot",
            "tiny-clip",
            {"task": "zero-shot-image-classification", "candidate_labels": ["cat", "dog"]},
        ),
        ("tiny-captioner", "tiny-blip", {"task": "image-to-text", "max_new_tokens": 8}),
        (
            "tiny-image-embedder",
            "tiny-vit",
            {"task": "image-feature-extraction", "max_image_pixels": 1_000_000},
        ),
    ]
]
# Three weight variants of one classifier, at most two held by the replica at a time.
VISION_MODELS.append(
    {
        **_vision("tiny-vit-variants", "tiny-vit", task="image-classification"),
        "multiplex_config": {
            "variants_dir": "./.models/tiny-vit-variants",
            "max_variants_per_replica": 2,
        },
    }
)

# Beside the default config's voice-chat and rag-lite pipelines: image -> caption -> chat.
DESCRIBE_IMAGE = {
    "model_id": "describe-image",
    "timeout_s": 60,
    "steps": [
        {"task": "caption", "model": "tiny-captioner"},
        {
            "task": "chat",
            "model": "tiny-chat",
            "prompt": "Describe this picture: {text}",
            "max_tokens": 16,
        },
    ],
}


def _affinity_models(chat: dict) -> list[dict]:
    """tiny-chat on two replicas that hold one adapter each, and the same scaled to zero."""
    small = {"max_model_len": 256, "max_num_seqs": 8, "kv_cache_memory_bytes": 64 * 1024 * 1024}
    affinity = copy.deepcopy(chat)
    affinity["model_loading_config"]["model_id"] = AFFINITY_CHAT
    affinity["deployment_config"] = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25}}
    affinity["multiplex_config"]["max_variants_per_replica"] = 1
    affinity["engine_kwargs"].update(small, enforce_eager=True)
    cold = copy.deepcopy(affinity)
    cold["model_loading_config"]["model_id"] = COLD_CHAT
    cold["deployment_config"] = {
        "ray_actor_options": {"num_cpus": 0.25},
        "autoscaling_config": {
            "min_replicas": 0,
            "max_replicas": 1,
            "initial_replicas": 0,
            "upscale_delay_s": 0,
            "downscale_delay_s": 600,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    }
    return [affinity, cold]


def session_config(workdir: Path) -> dict:
    """The session platform's config; the scoped key's file is written into ``workdir``."""
    config = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    args = config["applications"][0]["args"]
    args["api_keys_env"] = "PLATFORM_TEST_API_KEYS"
    scoped_key = workdir / "embed-only.key"
    scoped_key.write_text(SCOPED_KEY + "\n")  # as a mounted Secret holds it
    adapter_key = workdir / "adapter-only.key"
    adapter_key.write_text(ADAPTER_KEY + "\n")
    args["api_keys"] = [
        {"name": "embed-only", "key_file": str(scoped_key), "models": [EMBED]},
        {"name": "adapter-only", "key_file": str(adapter_key), "models": [CHAT_ADAPTER]},
        {"name": "limited", "key_env": "PLATFORM_TEST_LIMITED_KEY", "requests_per_minute": 3},
        {"name": "few-tokens", "key_env": "PLATFORM_TEST_TOKEN_KEY", "tokens_per_minute": 60},
        {"name": "burst", "key_env": "PLATFORM_TEST_BURST_KEY", "requests_per_minute": 20},
        {"name": "reserves", "key_env": "PLATFORM_TEST_RESERVE_KEY", "tokens_per_minute": 60},
        {
            "name": "pipeline-tokens",
            "key_env": "PLATFORM_TEST_PIPELINE_TOKENS_KEY",
            "tokens_per_minute": 100,
        },
        ADMIN_KEY_ENTRY,
    ]
    args["cors"] = {"allow_origins": [ALLOWED_ORIGIN], "allow_credentials": True}
    args["usage"] = {"database": f"sqlite:///{workdir.resolve()}/usage.db"}  # the usage ledger
    args["router"] = {"max_request_bytes": 256 * 1024}
    (chat,) = [m for m in args["models"] if m["model_loading_config"]["model_id"] == CHAT]
    chat["engine_kwargs"]["enable_log_requests"] = True  # vLLM's log lines carry the request ids
    # JSON with no whitespace between its tokens: random weights would fill whatever whitespace
    # the grammar allows until max_tokens ran out, and the answer would not parse
    chat["engine_kwargs"]["structured_outputs_config"] = {
        "backend": "xgrammar",
        "disable_any_whitespace": True,
    }
    args["models"] += [CTC_MODEL, *VISION_MODELS, *_affinity_models(chat)]
    args.setdefault("groups", []).append(VISION_GROUP)
    args["pipelines"].append(DESCRIBE_IMAGE)
    # localhost is named but its addresses stay refused; 127.0.0.2 (where a test serves images)
    # is let in
    args["media"] = {
        "allowed_domains": ["localhost", IMAGE_HOST],
        "allowed_networks": [f"{IMAGE_HOST}/32"],
    }
    return config


def main(workdir: str) -> None:
    """Write the session config into ``workdir`` and print how to serve it and test against it."""
    directory = Path(workdir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(session_config(directory), sort_keys=False))
    keys = (
        f"PLATFORM_TEST_API_KEYS={API_KEY} PLATFORM_TEST_LIMITED_KEY={LIMITED_KEY} "
        f"PLATFORM_TEST_TOKEN_KEY={TOKEN_KEY} PLATFORM_TEST_BURST_KEY={BURST_KEY} "
        f"PLATFORM_TEST_ADMIN_KEY={ADMIN_KEY} PLATFORM_TEST_RESERVE_KEY={RESERVE_KEY} "
        f"PLATFORM_TEST_PIPELINE_TOKENS_KEY={PIPELINE_TOKENS_KEY}"
    )
    print(f"{keys} scripts/serve.sh {path} --num-cpus {NUM_CPUS}")
    print(
        'PLATFORM_URL=http://127.0.0.1:8000 bash scripts/test.sh tests/integration -m "not cluster"'
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "session-platform")
