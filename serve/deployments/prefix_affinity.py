"""Routing by prompt prefix (``routing: prefix_affinity``): Ray Serve LLM's request router on the
platform's engine deployments.

Ray's ``PrefixCacheAffinityRouter`` keeps a prefix tree of the prompts each replica took and sends
a request to the replica with the longest match, while the replicas' queues differ by at most its
``imbalanced_threshold`` (else Serve's pick of two); it drops a replica that dies or leaves from
the tree. It reads the prompt from an argument with a ``messages`` or ``prompt`` attribute (Ray
Serve LLM's request models), where the platform's router passes the request body as a dict
(``EngineDeployment.handle(model_id, capability, body, request_id)``): reading that dict is all
this adds.

Imported from Ray's private module (read from Ray 2.60): the public
``ray.serve.llm.request_router`` imports vLLM and torch first (15 s and hundreds of MB in every
process that holds a handle to the model, the shared router's included).
"""

from __future__ import annotations

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve._private.request_router.common import PendingRequest
from ray.serve.config import RequestRouterConfig

from configs.routing_models import RoutingConfig

PROMPT_FIELDS = ("messages", "prompt")  # chat completions, completions


class PrefixAffinityRouter(PrefixCacheAffinityRouter):
    """``PrefixCacheAffinityRouter`` reading the prompt from the request body the platform's
    router passes; a call without one (no body, an embedding's input, token ids only) gets
    Serve's pick."""

    def _extract_text_from_request(self, pending_request: PendingRequest) -> str | None:
        """The prompt of the first request body among the call's arguments as one string, or
        None where there is none to match (Ray's router divides by its length)."""
        for arg in pending_request.args:
            if isinstance(arg, dict):
                for field in PROMPT_FIELDS:
                    if field in arg:
                        return self._normalize_prompt_to_string(arg[field]) or None
        return None


def request_router_config(routing: RoutingConfig) -> RequestRouterConfig | None:
    """The engine deployment's ``request_router_config`` for ``routing``; None: Serve's default."""
    if not routing.by_prefix:
        return None
    return RequestRouterConfig(
        request_router_class=f"{__name__}.{PrefixAffinityRouter.__name__}",
        request_router_kwargs={"imbalanced_threshold": routing.max_imbalance},
    )
