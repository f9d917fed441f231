"""The platform's own metrics, exported through Ray's metrics system: each process records them
and every node's Ray metrics endpoint serves them to Prometheus (named ``ray_platform_*``), as
it does Serve's (``ray_serve_*``: queued and ongoing requests per deployment, which is per model)
and vLLM's (``ray_vllm_*``: running and waiting requests, KV-cache use, tokens, TTFT and
inter-token latency inside the engine).

Labels: ``model`` (the model id; ``-`` when the request named no known model), ``endpoint``
(the route, as ``/v1/chat/completions``), ``path`` (``router``: through ``MultiModelRouter``;
``direct``: the one-hop path to a vLLM replica's own server); ``key`` (an API key's name, ``-``
on a platform without keys).
"""

from __future__ import annotations

import functools

LATENCY_BOUNDARIES_S = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
]
TOKEN_LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
REQUEST_TAGS = ("model", "endpoint", "path")


@functools.cache
def platform_metrics() -> PlatformMetrics:
    return PlatformMetrics()


class PlatformMetrics:
    """Created once per process (Ray registers each metric by name)."""

    def __init__(self):
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter(
            "platform_requests",
            "Requests answered, by model, endpoint, path and status.",
            tag_keys=REQUEST_TAGS + ("status",),
        )
        self.rejections = Counter(
            "platform_rejected_requests",
            "Requests refused or cut: full queue, rate limit, timeout, no replica, too large.",
            tag_keys=("model", "path", "reason"),
        )
        self.latency = Histogram(
            "platform_request_latency_s",
            "Seconds from the request to the end of its answer.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=REQUEST_TAGS,
        )
        self.time_to_first_token = Histogram(
            "platform_time_to_first_token_s",
            "Seconds from a streamed request to its first event.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=REQUEST_TAGS,
        )
        self.inter_token_latency = Histogram(
            "platform_inter_token_latency_s",
            "A stream's mean seconds between events after the first.",
            boundaries=TOKEN_LATENCY_BOUNDARIES_S,
            tag_keys=REQUEST_TAGS,
        )
        # by key name, never a secret: as many series as keys (the YAML's and the admin's)
        self.key_requests = Counter(
            "platform_key_requests",
            "Model requests answered, by API key name, model and status.",
            tag_keys=("key", "model", "status"),
        )
        self.key_tokens = Counter(
            "platform_key_tokens",
            "Tokens spent, by API key name, model and kind (prompt or completion).",
            tag_keys=("key", "model", "kind"),
        )
        self.key_media = Counter(
            "platform_key_media",
            "Media a key's requests sent or got, by API key name, model and kind: audio_in_s, "
            "audio_out_s and video_s in seconds, images in images (the usage ledger's columns).",
            tag_keys=("key", "model", "kind"),
        )
        self.batch_size = Histogram(
            "platform_batch_size",
            "Requests per forward pass of a batching engine.",
            boundaries=BATCH_SIZE_BOUNDARIES,
            tag_keys=("model",),
        )
