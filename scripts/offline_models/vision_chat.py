"""A tiny random-weight vision-language chat model (LLaVA: a CLIP vision tower, a projector and
a Llama decoder) with a real processor, built with no network. It runs without torchvision (the
PIL image processor) and answers gibberish about any image: it exercises the serving path."""

from __future__ import annotations

from pathlib import Path

from offline_models.audio import _builds

IMAGE_TOKEN = "<image>"
# ChatML, with an image placeholder where a message has an image part (the processor expands it
# to one token per image patch).
TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
IMAGE_SIZE, PATCH = 32, 8


def build_tiny_llava(out: Path, chat_source: Path, seed: int = 0) -> Path:
    """``tiny-llava``, its tokenizer ``chat_source``'s (tiny-chat's) plus the image token."""

    @_builds("tiny-llava", "config.json", "model.safetensors", "processor_config.json")
    def build(target: Path, seed: int) -> None:
        import torch
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
            PreTrainedTokenizerFast,
        )

        tokenizer = PreTrainedTokenizerFast.from_pretrained(chat_source)
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        tokenizer.chat_template = TEMPLATE
        images = CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        )
        LlavaProcessor(
            image_processor=images,
            tokenizer=tokenizer,
            patch_size=PATCH,
            chat_template=TEMPLATE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ).save_pretrained(target)
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
            projection_dim=32,
        )
        text = LlamaConfig(
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
        )
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            vision_feature_layer=-1,
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            vision_feature_select_strategy="default",
        )
        torch.manual_seed(seed)
        LlavaForConditionalGeneration(config).save_pretrained(target)

    return build(out, seed)
