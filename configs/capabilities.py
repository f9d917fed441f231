"""What models are and what they can serve: the vocabulary of the config, the router and the
engines."""

from __future__ import annotations

from enum import StrEnum


class ModelType(StrEnum):
    VLLM = "vllm"
    AUDIO = "audio"
    VISION = "vision"
    VIDEO = "video"
    PIPELINE = "pipeline"  # not an engine: a chain of other models (``pipelines:`` in the YAML)


class Capability(StrEnum):
    """What a model can serve; the router answers requests for anything else with a 400."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    # vLLM's other endpoints: relevance of documents to a query (cross-encoders, or embeddings'
    # cosine), text classification, and the model's tokenizer
    RERANK = "rerank"
    SCORE = "score"
    CLASSIFY = "classify"
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    TRANSCRIPTION = "audio.transcriptions"
    TRANSLATION = "audio.translations"
    SPEECH = "audio.speech"
    # vision and video tasks, served through the Open Inference Protocol (/v2)
    IMAGE_CLASSIFICATION = "image-classification"
    ZERO_SHOT_IMAGE_CLASSIFICATION = "zero-shot-image-classification"
    OBJECT_DETECTION = "object-detection"
    IMAGE_TO_TEXT = "image-to-text"
    IMAGE_EMBEDDING = "image-feature-extraction"
    VIDEO_CLASSIFICATION = "video-classification"
    # a chain of other models' calls declared in the YAML (configs/pipeline_models.py)
    PIPELINE = "pipeline"
