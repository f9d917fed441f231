"""How a vLLM model's requests pick a replica: the ``routing:`` setting of a model entry."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from common.base_pydantic import StrictModel

DEFAULT_MAX_IMBALANCE = 8


class RoutingPolicy(StrEnum):
    DEFAULT = "default"  # Serve's pick: the shorter queue of two replicas drawn at random
    PREFIX_AFFINITY = "prefix_affinity"  # where the prompt's prefix was sent, while load allows


class RoutingConfig(StrictModel):
    """Which replica of a vLLM model takes a request. ``prefix_affinity`` sends a request to the
    replica that took the longest prefix of its prompt (chat messages, completion prompt), where
    vLLM's prefix cache likely still holds it, through Ray Serve LLM's
    ``PrefixCacheAffinityRouter``; load wins while the replicas' queues differ by more than
    ``max_imbalance`` requests. A bare policy name stands for ``{policy: <name>}``."""

    policy: RoutingPolicy = Field(
        default=RoutingPolicy.DEFAULT,
        description="default: Serve's pick (the shorter queue of two replicas drawn at random); "
        "prefix_affinity: the replica that took the longest prefix of the prompt, with vLLM's "
        "prefix caching on, while load allows",
    )
    max_imbalance: int = Field(
        default=DEFAULT_MAX_IMBALANCE,
        ge=0,
        description="prefix_affinity only: once the longest and the shortest queue of the "
        "model's replicas differ by more than this many requests, load wins over affinity "
        "(Serve's default pick), so a hot prefix spills over to the other replicas",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_policy(cls, value: Any) -> Any:
        return {"policy": value} if isinstance(value, str) else value

    @property
    def by_prefix(self) -> bool:
        return self.policy is RoutingPolicy.PREFIX_AFFINITY
