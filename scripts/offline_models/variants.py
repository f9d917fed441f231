"""Multiplexed variants of the tiny models: LoRA adapters of tiny-chat, other weights of
tiny-vit."""

from __future__ import annotations

import json
from pathlib import Path

from offline_models.audio import _builds
from offline_models.vision import build_tiny_vit

LORA_RANK = 8
CHAT_ADAPTERS = {"sql": 1, "poet": 2}  # name -> seed
VIT_VARIANTS = {"a": 1, "b": 2, "c": 3}


def build_tiny_chat_adapters(out: Path, base: Path) -> Path:
    """PEFT LoRA adapters (q_proj, v_proj) of tiny-chat, random and large enough to change its
    output."""
    root = out / "tiny-chat-adapters"
    for name, seed in CHAT_ADAPTERS.items():
        _builds(name, "adapter_config.json", "adapter_model.safetensors")(
            lambda target, s, base=base: _write_lora(target, base, s)
        )(root, seed)
    return root


def _write_lora(target: Path, base: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    outputs = {
        "q_proj": heads * head_dim,
        "v_proj": config.get("num_key_value_heads", heads) * head_dim,
    }
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, width in outputs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(LORA_RANK, hidden, generator=generator) * 0.5
            )
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(width, LORA_RANK, generator=generator) * 0.5
            )
    save_file(tensors, target / "adapter_model.safetensors")
    (target / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": LORA_RANK,
                "lora_alpha": 2 * LORA_RANK,
                "lora_dropout": 0.0,
                "bias": "none",
                "target_modules": list(outputs),
                "fan_in_fan_out": False,
                "base_model_name_or_path": str(base),
            },
            indent=1,
        )
    )


def build_tiny_vit_variants(out: Path) -> Path:
    """tiny-vit with other random weights: the same classifier, different scores."""
    root = out / "tiny-vit-variants"
    for name, seed in VIT_VARIANTS.items():
        _builds(name, "config.json", "model.safetensors")(build_tiny_vit.__wrapped__)(root, seed)
    return root
