"""Tiny random-weight vision and video models with real processors, built with no network.

Their labels, boxes and captions are noise: they exist to exercise the serving path
(decoding, batching, protocol, errors), not to recognise anything.
"""

from __future__ import annotations

from pathlib import Path

from offline_models.audio import CORPUS, _builds

LABELS = ["cat", "dog", "bird", "car", "tree"]
IMAGE_SIZE = 32
TINY_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=IMAGE_SIZE,
    patch_size=8,
)


def _labelled(count: int | None = None) -> dict:
    labels = LABELS[:count] if count else LABELS
    return {
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def _square(size: int = IMAGE_SIZE) -> dict:
    return {"height": size, "width": size}


@_builds("tiny-vit", "config.json", "model.safetensors", "preprocessor_config.json")
def build_tiny_vit(target: Path, seed: int) -> None:
    """A ViT image classifier (also serves image embeddings through its encoder)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    ViTForImageClassification(ViTConfig(**TINY_VIT, **_labelled())).save_pretrained(target)
    ViTImageProcessor(size=_square()).save_pretrained(target)


@_builds("tiny-yolos", "config.json", "model.safetensors", "preprocessor_config.json")
def build_tiny_yolos(target: Path, seed: int) -> None:
    """A YOLOS object detector (a ViT with detection tokens; no timm backbone needed)."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(seed)
    config = YolosConfig(
        **{**TINY_VIT, "image_size": [IMAGE_SIZE, IMAGE_SIZE]},
        num_detection_tokens=5,
        **_labelled(),
    )
    YolosForObjectDetection(config).save_pretrained(target)
    YolosImageProcessor(
        size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}
    ).save_pretrained(target)


def _bpe(target: Path, vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS * 4,
        trainer=trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return bpe


@_builds("tiny-clip", "config.json", "model.safetensors", "processor_config.json")
def build_tiny_clip(target: Path, seed: int) -> None:
    """A CLIP model for zero-shot image classification (any labels, given per request)."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
        PreTrainedTokenizerFast,
    )

    bpe = _bpe(target)
    bpe.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=64,
    )
    torch.manual_seed(seed)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        projection_dim=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(**TINY_VIT, projection_dim=16)
    CLIPModel(
        CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    ).save_pretrained(target)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=_square())
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)


@_builds("tiny-blip", "config.json", "model.safetensors", "processor_config.json")
def build_tiny_blip(target: Path, seed: int) -> None:
    """A BLIP captioning model (image-to-text)."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
        PreTrainedTokenizerFast,
    )

    bpe = _bpe(target)
    bpe.add_special_tokens(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", "[DEC]"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        bos_token="[DEC]",
        model_max_length=32,
    )
    torch.manual_seed(seed)
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        encoder_hidden_size=32,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    vision = BlipVisionConfig(**TINY_VIT)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    )
    model.generation_config.max_length = 16
    model.save_pretrained(target)
    image_processor = BlipImageProcessor(size=_square())
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)


@_builds("tiny-videomae", "config.json", "model.safetensors", "preprocessor_config.json")
def build_tiny_videomae(target: Path, seed: int) -> None:
    """A VideoMAE video classifier over 4 frames."""
    import torch
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEImageProcessor

    torch.manual_seed(seed)
    config = VideoMAEConfig(**TINY_VIT, num_frames=4, tubelet_size=2, **_labelled(3))
    VideoMAEForVideoClassification(config).save_pretrained(target)
    VideoMAEImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=_square()).save_pretrained(
        target
    )
