"""vLLM's prefix-cache hits on one replica, for the replica's own stats (the console shows them).

vLLM also exports them to Ray's metrics, per replica (``ray_vllm_prefix_cache_queries_total`` and
``ray_vllm_prefix_cache_hits_total``, label ``ReplicaId``), which a replica cannot read back: this
tallies the same counts as one more of vLLM's stat loggers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PrefixCacheTally:
    """Prompt tokens looked up in the prefix cache, and those found, since the engine started."""

    queries: int = 0
    hits: int = 0

    def add(self, queries: int, hits: int) -> None:
        self.queries += queries
        self.hits += hits

    def stats(self) -> dict[str, Any]:
        """The counts, and the share of prompt tokens found cached (None before any prompt)."""
        rate = round(self.hits / self.queries, 4) if self.queries else None
        return {"prefix_cache_queries": self.queries, "prefix_cache_hit_rate": rate}

    def stat_logger(self) -> Any:
        """A factory of vLLM's ``StatLoggerBase`` that adds each engine step's counts here."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        tally = self

        class PrefixCacheLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0):
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kw: Any):
                if scheduler_stats is not None:
                    cache = scheduler_stats.prefix_cache_stats
                    tally.add(cache.queries, cache.hits)

            def log_engine_initialized(self) -> None:
                pass

        return PrefixCacheLogger
