"""Tiny random-weight text models with real tokenizers, built with no network access.

Their scores are noise: they exist to exercise the serving path (rerank, score, classify,
tokenize), not to judge relevance.
"""

from __future__ import annotations

from pathlib import Path

from offline_models.audio import _builds

# head_dim 64: vLLM's CPU attention kernels take no smaller heads
TINY_BERT = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=256,
    max_position_embeddings=512,
)


def build_tiny_reranker(out: Path, tokenizer_source: Path | None, seed: int = 0) -> Path | None:
    """A BERT cross-encoder (one relevance logit per query-document pair, as ms-marco rerankers
    are), with the WordPiece tokenizer of ``tokenizer_source`` (all-MiniLM-L6-v2's)."""
    if tokenizer_source is None:
        return None

    @_builds("tiny-reranker", "config.json", "model.safetensors", "tokenizer.json")
    def build(target: Path, seed: int) -> None:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        tokenizer.save_pretrained(target)
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=len(tokenizer),
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
            torch_dtype="float32",
            **TINY_BERT,
        )
        BertForSequenceClassification(config).save_pretrained(target, safe_serialization=True)

    return build(out, seed)
