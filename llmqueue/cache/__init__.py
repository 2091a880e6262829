"""The response cache: provider answers kept by what was asked, reused instead of paying again.

``key`` turns a call into its cache key (pure); ``disk`` (SQLite, the default) and ``redis_store`` keep
the answers; ``response_cache`` puts a store and a one-call-at-a-time rule together for the runner.
"""

from llmqueue.cache.key import job_cache_key, request_key
from llmqueue.cache.response_cache import CacheLookup, ResponseCache, open_store, read_answer
from llmqueue.cache.store import CacheStats, CacheStore

__all__ = [
    "CacheLookup",
    "CacheStats",
    "CacheStore",
    "ResponseCache",
    "job_cache_key",
    "open_store",
    "read_answer",
    "request_key",
]
