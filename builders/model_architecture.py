"""What a model's files say about its size, read without loading it: the parameter count and
dtype from the safetensors headers (local files, or the Hub's header metadata), or, when only
``config.json`` is at hand, from the architecture; the KV cache one token takes.

The formulas cover the decoder-only transformers vLLM serves (Llama, Mistral, Qwen2, ... with
grouped-query attention, gated MLPs and mixture-of-experts) and Whisper; for any other
architecture the count comes from the weights' headers or stays unknown (None).
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from configs.server_models import CLOUD_SCHEMES

DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "float8": 1,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "int8": 1,
}
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own cap on a header


@functools.cache  # read once per process: the plan's table and the fit check both estimate
def read_model_config(source: str) -> dict[str, Any] | None:
    """``config.json`` of a local model directory or a Hub repository (None when out of reach:
    offline, a cloud URI, a private repository without a token)."""
    if source.startswith(CLOUD_SCHEMES):
        return None
    if os.path.isdir(source):
        path = Path(source) / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
        return (
            json.loads(Path(hf_hub_download(source, "config.json")).read_text())
            if hub_reachable()
            else None
        )
    except Exception:  # not found, gated: the estimate says unknown instead
        return None


@functools.cache
def hub_reachable() -> bool:
    """One quick probe: offline, the Hub client would retry each file for most of a minute."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        httpx.head(constants.ENDPOINT, timeout=3)
        return True
    except httpx.HTTPError:
        return False


@functools.cache
def stored_weight_bytes(source: str) -> int | None:
    """Bytes of the weights as stored (quantized checkpoints included): the sum of every tensor in
    the safetensors headers, read locally or from the Hub without downloading the weights."""
    if source.startswith(CLOUD_SCHEMES):
        return None
    if os.path.isdir(source):
        files = sorted(Path(source).glob("*.safetensors"))
        return sum(_tensor_bytes(_safetensors_header(f)) for f in files) if files else None
    if not hub_reachable():
        return None
    try:
        from huggingface_hub import get_safetensors_metadata

        metadata = get_safetensors_metadata(source)
        return sum(
            count * SAFETENSORS_DTYPE_BYTES.get(dtype, 2)
            for dtype, count in metadata.parameter_count.items()
        )
    except Exception:
        return None


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (header of {length} bytes)")
        return json.loads(handle.read(length))


def _tensor_bytes(header: dict[str, Any]) -> int:
    return sum(
        math.prod(t["shape"]) * SAFETENSORS_DTYPE_BYTES[t["dtype"]]
        for name, t in header.items()
        if name != "__metadata__"
    )


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a vision-language config (its own config otherwise)."""
    return config.get("text_config") or config


def parameter_count(config: dict[str, Any]) -> int | None:
    """Parameters of the architecture ``config`` describes, or None when it is not one we know."""
    if config.get("model_type") == "whisper":
        return _whisper_parameters(config)
    text = text_config(config)
    if all(
        k in text for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    ):
        return _decoder_parameters(text)
    return None


def head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _decoder_parameters(c: dict[str, Any]) -> int:
    """A pre-norm decoder: embeddings (and an untied LM head), per layer grouped-query attention
    (biases on q, k, v when ``attention_bias`` or Qwen2), a gated MLP or its experts, two norms."""
    hidden, heads, layers = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
    kv_heads, dim = c.get("num_key_value_heads") or heads, head_dim(c)
    attention = hidden * heads * dim * 2 + hidden * kv_heads * dim * 2  # q, o; k, v
    if c.get("attention_bias") or c.get("model_type") == "qwen2":
        attention += (heads + 2 * kv_heads) * dim
    experts = c.get("num_local_experts") or c.get("num_experts") or 0
    if experts:
        expert_size = c.get("moe_intermediate_size") or c["intermediate_size"]
        mlp = experts * 3 * hidden * expert_size + hidden * experts  # the experts and their router
        mlp += 3 * hidden * c.get("shared_expert_intermediate_size", 0)
    else:
        mlp = (
            (3 if c.get("hidden_act", "silu") in ("silu", "swiglu") else 2)
            * hidden
            * c["intermediate_size"]
        )
    embeddings = c["vocab_size"] * hidden * (1 if c.get("tie_word_embeddings") else 2)
    return embeddings + layers * (attention + mlp + 2 * hidden) + hidden


def _whisper_parameters(c: dict[str, Any]) -> int:
    """Whisper: a convolutional stem and an encoder, a decoder with cross-attention, tied output."""
    d = c["d_model"]
    attention = 4 * d * d + 3 * d  # q, k, v, o; biases on q, v, o
    encoder_layer = attention + 2 * d + _feed_forward(d, c["encoder_ffn_dim"]) + 2 * d
    decoder_layer = 2 * (attention + 2 * d) + _feed_forward(d, c["decoder_ffn_dim"]) + 2 * d
    stem = c["num_mel_bins"] * d * 3 + d + d * d * 3 + d
    encoder = stem + c["max_source_positions"] * d + c["encoder_layers"] * encoder_layer + 2 * d
    decoder = (
        (c["vocab_size"] + c["max_target_positions"]) * d
        + c["decoder_layers"] * decoder_layer
        + 2 * d
    )
    return encoder + decoder


def _feed_forward(d: int, inner: int) -> int:
    return d * inner + inner + inner * d + d


def kv_bytes_per_token(
    config: dict[str, Any], dtype_bytes: int, tensor_parallel: int = 1, pipeline_stages: int = 1
) -> int | None:
    """KV cache one token takes on one GPU of a TP x PP replica (KV heads fewer than the TP degree
    are replicated, as vLLM does)."""
    c = text_config(config)
    if not all(k in c for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")):
        return None
    kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    layers = math.ceil(c["num_hidden_layers"] / pipeline_stages)
    return 2 * layers * max(1, kv_heads // tensor_parallel) * head_dim(c) * dtype_bytes
