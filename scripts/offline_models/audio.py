"""Tiny random-weight speech models with real processors, built with no network access.

Their outputs are noise or gibberish: they exist to exercise the serving path (decoding,
batching, chunking, formats, errors), not to recognise or speak words.
"""

from __future__ import annotations

import functools
import json
import string
from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns spoken words into text",
    "hello world this is a test of the audio engine",
    "one two three four five six seven eight nine ten",
]
WHISPER_LANGUAGES = ["en", "fr", "de", "es"]


def _builds(name: str, *required: str):
    """Make ``build(target, seed)`` a ``(out, seed) -> out/name`` that skips a finished model."""

    def wrap(build):
        @functools.wraps(build)
        def run(out: Path, seed: int = 0) -> Path:
            target = out / name
            if not all((target / file).exists() for file in required):
                target.mkdir(parents=True, exist_ok=True)
                build(target, seed)
            return target

        return run

    return wrap


@_builds("tiny-whisper", "config.json", "model.safetensors", "processor_config.json")
def build_tiny_whisper(target: Path, seed: int) -> None:
    """A Whisper encoder-decoder (speech-to-text, translation, timestamps)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        CORPUS * 4,
        trainer=trainers.BpeTrainer(
            vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    vocab_file, merges_file = bpe.model.save(str(target))
    merges = [
        tuple(line.split())
        for line in Path(merges_file).read_text().splitlines()
        if line and not line.startswith("#")
    ]
    # Whisper's specials, in its order: timestamps must come after every special token.
    specials = (
        ["<|endoftext|>", "<|startoftranscript|>"]
        + [f"<|{code}|>" for code in WHISPER_LANGUAGES]
        + [
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
            "<|nospeech|>",
            "<|notimestamps|>",
        ]
    )
    tokenizer = WhisperTokenizer(
        vocab=json.loads(Path(vocab_file).read_text()),
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    vocab = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=vocab["<|endoftext|>"],
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        decoder_start_token_id=vocab["<|startoftranscript|>"],
    )
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config
    generation.lang_to_id = {f"<|{code}|>": vocab[f"<|{code}|>"] for code in WHISPER_LANGUAGES}
    generation.task_to_id = {
        "transcribe": vocab["<|transcribe|>"],
        "translate": vocab["<|translate|>"],
    }
    generation.no_timestamps_token_id = vocab["<|notimestamps|>"]
    generation.prev_sot_token_id = vocab["<|startofprev|>"]
    generation.is_multilingual = True
    generation.max_initial_timestamp_index = 50
    generation.max_length = 64
    # Cross-attention heads used to align words to time (word-level timestamps).
    generation.alignment_heads = [[1, 0], [1, 1]]
    generation._from_model_config = (
        False  # else loading rebuilds it from config.json, losing the above
    )
    model.save_pretrained(target, safe_serialization=True)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(target)


@_builds("tiny-wav2vec2", "config.json", "model.safetensors", "processor_config.json")
def build_tiny_wav2vec2(target: Path, seed: int) -> None:
    """A Wav2Vec2 CTC model with a character vocabulary (speech-to-text, word timestamps)."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    chars = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list(string.ascii_lowercase + "'")
    (target / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(target / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=len(chars),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        pad_token_id=0,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        ctc_loss_reduction="mean",
    )
    Wav2Vec2ForCTC(config).save_pretrained(target, safe_serialization=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(target)


@_builds("tiny-vits", "config.json", "model.safetensors", "vocab.json")
def build_tiny_vits(target: Path, seed: int) -> None:
    """A VITS (MMS-TTS architecture) text-to-speech model with a character vocabulary."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    chars = ["<pad>", "<unk>"] + list(" " + string.ascii_lowercase + string.digits + ".,!?'-")
    (target / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    tokenizer = VitsTokenizer(
        str(target / "vocab.json"),
        pad_token="<pad>",
        unk_token="<unk>",
        add_blank=True,
        normalize=True,
        phonemize=False,
        is_uroman=False,
    )
    torch.manual_seed(seed)
    config = VitsConfig(
        vocab_size=len(chars),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        window_size=4,
        ffn_dim=64,
        ffn_kernel_size=3,
        flow_size=32,
        spectrogram_bins=65,
        upsample_initial_channel=32,
        upsample_rates=[8, 8, 4],
        upsample_kernel_sizes=[16, 16, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=2,
        prior_encoder_num_wavenet_layers=2,
        posterior_encoder_num_wavenet_layers=2,
        duration_predictor_filter_channels=32,
        depth_separable_num_layers=2,
        use_stochastic_duration_prediction=False,
        sampling_rate=16000,
    )
    VitsModel(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
