"""A replica's tally of vLLM's prefix-cache counts, as vLLM's stat-logger interface feeds it."""

from types import SimpleNamespace

from servers.vllm_prefix_cache import PrefixCacheTally


def test_the_tally_adds_each_engine_steps_counts_and_gives_the_hit_rate():
    tally = PrefixCacheTally()
    assert tally.stats() == {"prefix_cache_queries": 0, "prefix_cache_hit_rate": None}
    logger = tally.stat_logger()(None, 0)
    for queries, hits in ((100, 0), (100, 75), (0, 0)):
        step = SimpleNamespace(prefix_cache_stats=SimpleNamespace(queries=queries, hits=hits))
        logger.record(step, None)
    logger.record(None, SimpleNamespace())  # a step without the scheduler's stats
    assert tally.stats() == {"prefix_cache_queries": 200, "prefix_cache_hit_rate": 0.375}
