"""The exact cache tier's keyspace, shared by its owner (services/cache) and the gateway's read fast path.

An exact-tier entry is one Redis string ``<prefix>x:<tenant>:<exact key>`` holding a serialized
``weir.cache.v1.CachedAnswer`` with the entry's TTL. Only the cache service writes entries (with their
registry, capacity and invalidation: services/cache/exact.py); a reader that shares the Redis may GET them
directly instead of asking the cache over gRPC (the gateway does: a hit then costs one Redis round trip).

The cache also keeps ``<prefix>ctx:<tenant>``, a sorted set of the conversation contexts (weir.chat.context_key)
that hold semantic entries, scored by the latest expiry among them. A reader can tell from it, in the same round
trip as the exact GET, that a semantic search would find nothing (a new conversation, a turn never seen before)
and skip it. Entries evicted or invalidated may leave a context listed: that only costs a search.

Readers that bypass the service add their lookup counts to ``<prefix>stats:<tenant>`` (a hash with the
fields in STAT_FIELDS) and the tenant to the set ``<prefix>stats-tenants``; the cache's GetStats adds these
to its own counts, so hit rates stay whole.
"""

from __future__ import annotations

STAT_FIELDS = ("exact_lookups", "exact_hits", "misses")


def entry_key(prefix: str, tenant: str, exact_key: str) -> str:
    """Redis key of the exact-tier entry of `tenant` under `exact_key` (weir.chat.exact_key)."""
    return f"{prefix}x:{tenant}:{exact_key}"


def stats_key(prefix: str, tenant: str) -> str:
    """Redis hash of the lookup counts that readers outside the cache service report for `tenant`."""
    return f"{prefix}stats:{tenant}"


def stats_tenants_key(prefix: str) -> str:
    """Redis set of the tenants that have a stats hash."""
    return f"{prefix}stats-tenants"


def context_index_key(prefix: str, tenant: str) -> str:
    """Redis sorted set: context key -> latest expiry (ms) of the tenant's semantic entries in that context."""
    return f"{prefix}ctx:{tenant}"


def semantic_registry_key(prefix: str, tenant: str) -> str:
    """Redis sorted set of the tenant's entries that are also in the semantic tier (id -> expiry ms)."""
    return f"{prefix}sem:{tenant}"
