"""Settings of the cache service, from WEIR_CACHE_* variables (plus WEIR_REDIS_URL and WEIR_MILVUS_URI)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.cache.checks import CHECK_NAMES, NEVER_OVERRULED
from services.cache.verifier import ANALYSIS_TEXTS
from weir.kit.clients import ClientSettings
from weir.kit.config import Port, env, load, state_dir
from weir.kit.server import ServerSettings

_COLLECTION_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_CONSISTENCY = ("Strong", "Session", "Bounded", "Eventually")


@dataclass(frozen=True)
class CacheSettings:
    """Where the two tiers live, how long entries last and how strict the semantic tier is."""

    port: Port = env("WEIR_CACHE_PORT", 50052, help="gRPC CacheService port")
    redis_url: str = env("WEIR_REDIS_URL", "redis://127.0.0.1:6379/0", secret=True,
                         help="the exact tier's Redis (may carry a password, so never logged)")
    redis_prefix: str = env("WEIR_CACHE_REDIS_PREFIX", "weir:cache:",
                            help="prefix of every key, so several meshes or test runs can share a Redis")
    redis_timeout_s: float = env("WEIR_CACHE_REDIS_TIMEOUT_S", 0.25,
                                 help="socket connect/read timeout; a dead Redis degrades lookups this fast")
    redis_retry_after_s: float = env("WEIR_CACHE_REDIS_RETRY_AFTER_S", 1.0,
                                     help="after a connection failure, Redis is skipped (degraded) this long")
    ttl_s: int = env("WEIR_CACHE_TTL_S", 86400, help="default time to live of an entry")
    max_entries_per_tenant: int = env("WEIR_CACHE_MAX_ENTRIES_PER_TENANT", 100_000,
                                      help="capacity per tenant; the oldest entries are evicted beyond it")
    milvus_uri: str = env("WEIR_MILVUS_URI", "", secret=True,
                          help="Milvus server or cluster URI (http://host:19530) or a Milvus Lite file (*.db); "
                               "empty = Milvus Lite in <state dir>/milvus/cache.db. `weir up` starts the bundled "
                               "Milvus standalone and sets this to it (docs/cache.md)")
    milvus_token: str = env("WEIR_MILVUS_TOKEN", "", secret=True, help="Milvus credentials (user:password)")
    milvus_collection_prefix: str = env("WEIR_CACHE_MILVUS_COLLECTION_PREFIX", "weir_cache",
                                        help="collections are <prefix>_<embedding model>_<hash>")
    milvus_timeout_s: float = env("WEIR_CACHE_MILVUS_TIMEOUT_S", 2.0, help="timeout of one Milvus read")
    milvus_write_timeout_s: float = env(
        "WEIR_CACHE_MILVUS_WRITE_TIMEOUT_S", 30.0,
        help="timeout of one Milvus write or flush (Milvus Lite stalls them while it compacts segments)",
    )
    milvus_consistency: str = env(
        "WEIR_CACHE_MILVUS_CONSISTENCY", "",
        help="consistency level of new collections; empty = Session for Milvus Lite, Bounded for a server "
             "(a search never waits for the time tick after this process' writes; an entry becomes "
             "semantically visible within seconds, the exact tier serves it at once)",
    )
    milvus_flush_rows: int | None = env(
        "WEIR_CACHE_MILVUS_FLUSH_ROWS", None,
        help="flush a collection after this many writes; unset = 128 for Milvus Lite (whose unflushed rows "
             "are searched slowly), 0 (never) for a server",
    )
    milvus_write_interval_ms: float = env(
        "WEIR_CACHE_MILVUS_WRITE_INTERVAL_MS", 20.0,
        help="at most one Milvus write call per interval: rows stored meanwhile go out together (an entry "
             "becomes semantically visible up to this much later; the exact tier serves it at once)",
    )
    milvus_search_slots: int = env(
        "WEIR_CACHE_MILVUS_SEARCH_SLOTS", 8,
        help="Milvus searches out at once, at most one per tenant and conversation context: lookups that "
             "find their scope's search out (or no slot) wait for it and go out together as one "
             "multi-vector search (cheaper per lookup under load; no wait when idle)",
    )
    purge_interval_s: float = env("WEIR_CACHE_PURGE_INTERVAL_S", 60.0,
                                  help="how often expired semantic rows are deleted (they are never served)")
    sim_threshold: float = env("WEIR_CACHE_SIM_THRESHOLD", 0.70,
                               help="cosine similarity a candidate needs before the verifier looks at it")
    top_k: int = env("WEIR_CACHE_SEMANTIC_TOP_K", 5, help="candidates fetched per semantic lookup")
    semantic_max_chars: int = env(
        "WEIR_CACHE_SEMANTIC_MAX_CHARS", 2000,
        help="longest question the semantic tier compares or stores (longer ones: the exact tier only). The "
             "embedding reads ~256 tokens of a question, and the verifier's cost grows with its length (~4 s of "
             "the cache's loop for 500 KB)")
    verifier_cache_texts: int = env(
        "WEIR_CACHE_VERIFIER_CACHE_TEXTS", ANALYSIS_TEXTS,
        help="texts whose verifier analysis is kept (an LRU; ~1.25 KiB each, ~5 MiB when full): stored questions "
             "recur as candidates, and each analysis costs ~0.25 ms to redo. As many as the judge's and the "
             "embedder's LRUs by default; raise it for a hot set of more candidate questions")
    judge: bool = env(
        "WEIR_CACHE_JUDGE", True,
        help="ask the embedder's paraphrase judge about the candidates the verifier's rules leave open "
             "(services/cache/judge.py); false: the rules decide alone")
    embedder_addr: str = env("WEIR_EMBEDDER_ADDR", "127.0.0.1:50051", help="the embedder, for its judge")
    judge_overrules: tuple[str, ...] = env(
        "WEIR_CACHE_JUDGE_OVERRULES", tuple(c for c in CHECK_NAMES if c not in NEVER_OVERRULED),
        help="verifier checks whose refusal the judge may overrule (every other check must pass: by default "
             "numbers, units, dates, negation, roles and opposites, whose rules read explicit tokens, always "
             "decide)")
    judge_accept: float = env(
        "WEIR_CACHE_JUDGE_ACCEPT", 0.99,
        help="judge score at or above which a candidate refused only by those checks is served")
    judge_veto: float = env(
        "WEIR_CACHE_JUDGE_VETO", 0.05,
        help="judge score below which a candidate the rules accept is refused; 0: no veto")
    judge_sim_threshold: float = env(
        "WEIR_CACHE_JUDGE_SIM_THRESHOLD", 0.50,
        help="cosine similarity a candidate needs before the judge may overrule a refusal (the lower of this "
             "and WEIR_CACHE_SIM_THRESHOLD counts: the judge reads paraphrases the embedding scores lower)")
    judge_timeout_s: float = env("WEIR_CACHE_JUDGE_TIMEOUT_S", 0.25,
                                 help="longest a lookup waits for the judge; then the rules decide alone")
    judge_reading: str = env(
        "WEIR_CACHE_JUDGE_READING", "stored_first",
        help="stored_first: the judge reads the cached question first (one model run per pair); both: the lower "
             "of its two readings (question first too: two runs)")
    judge_lru: int = env("WEIR_CACHE_JUDGE_LRU", 4096,
                         help="recent (question, cached question) scores kept; 0: ask the judge every time")
    hnsw_ef: int = env("WEIR_CACHE_HNSW_EF", 128,
                       help="HNSW search breadth (64 misses ~10% of near neighbours at 100k random 384-d rows)")
    clients: ClientSettings = field(default_factory=lambda: load(ClientSettings))
    server: ServerSettings = field(default_factory=lambda: load(ServerSettings))

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(state_dir() / "milvus" / "cache.db")

    @property
    def milvus_is_lite(self) -> bool:
        """pymilvus runs Milvus Lite in this process for a local `.db` path."""
        return self.resolved_milvus_uri.endswith(".db")

    @property
    def resolved_consistency(self) -> str:
        return self.milvus_consistency or ("Session" if self.milvus_is_lite else "Bounded")

    @property
    def resolved_flush_rows(self) -> int:
        if self.milvus_flush_rows is not None:
            return self.milvus_flush_rows
        return 128 if self.milvus_is_lite else 0

    def validate(self) -> list[str]:
        problems = []
        if self.ttl_s <= 0:
            problems.append("WEIR_CACHE_TTL_S must be > 0")
        if self.semantic_max_chars <= 0:
            problems.append("WEIR_CACHE_SEMANTIC_MAX_CHARS must be > 0")
        if self.verifier_cache_texts < 0:
            problems.append("WEIR_CACHE_VERIFIER_CACHE_TEXTS must be >= 0")
        if self.max_entries_per_tenant <= 0:
            problems.append("WEIR_CACHE_MAX_ENTRIES_PER_TENANT must be > 0")
        if min(self.redis_timeout_s, self.milvus_timeout_s, self.milvus_write_timeout_s) <= 0:
            problems.append("WEIR_CACHE_REDIS_TIMEOUT_S and WEIR_CACHE_MILVUS_(WRITE_)TIMEOUT_S must be > 0")
        if self.redis_retry_after_s < 0:
            problems.append("WEIR_CACHE_REDIS_RETRY_AFTER_S must be >= 0")
        if not 0.0 < self.sim_threshold <= 1.0:
            problems.append(f"WEIR_CACHE_SIM_THRESHOLD must be in (0, 1], got {self.sim_threshold}")
        unknown = sorted(set(self.judge_overrules) - set(CHECK_NAMES))
        if unknown:
            problems.append(f"WEIR_CACHE_JUDGE_OVERRULES: unknown checks {', '.join(unknown)} "
                            f"(checks: {', '.join(CHECK_NAMES)})")
        if hard := [c for c in NEVER_OVERRULED if c in self.judge_overrules]:
            problems.append(f"WEIR_CACHE_JUDGE_OVERRULES may not name {', '.join(hard)}: the judge never overrules "
                            f"{', '.join(NEVER_OVERRULED)}")
        if not 0.0 <= self.judge_veto <= self.judge_accept <= 1.0:
            problems.append("WEIR_CACHE_JUDGE_VETO and WEIR_CACHE_JUDGE_ACCEPT must satisfy 0 <= veto <= accept <= 1")
        if not 0.0 < self.judge_sim_threshold <= 1.0:
            problems.append("WEIR_CACHE_JUDGE_SIM_THRESHOLD must be in (0, 1]")
        if self.judge_reading not in ("both", "stored_first"):
            problems.append("WEIR_CACHE_JUDGE_READING must be both or stored_first")
        if self.judge_lru < 0:
            problems.append("WEIR_CACHE_JUDGE_LRU must be >= 0")
        if self.judge_timeout_s <= 0:
            problems.append("WEIR_CACHE_JUDGE_TIMEOUT_S must be > 0")
        if not 1 <= self.top_k <= 100:
            problems.append("WEIR_CACHE_SEMANTIC_TOP_K must be in [1, 100]")
        if self.hnsw_ef < self.top_k:
            problems.append("WEIR_CACHE_HNSW_EF must be >= WEIR_CACHE_SEMANTIC_TOP_K")
        if not _COLLECTION_PREFIX.fullmatch(self.milvus_collection_prefix):
            problems.append("WEIR_CACHE_MILVUS_COLLECTION_PREFIX must be a letter or _ then letters, digits, _")
        if self.milvus_consistency and self.milvus_consistency not in _CONSISTENCY:
            problems.append(f"WEIR_CACHE_MILVUS_CONSISTENCY must be one of {', '.join(_CONSISTENCY)}")
        if self.milvus_flush_rows is not None and self.milvus_flush_rows < 0:
            problems.append("WEIR_CACHE_MILVUS_FLUSH_ROWS must be >= 0")
        if not 0 <= self.milvus_write_interval_ms <= 5000:
            problems.append("WEIR_CACHE_MILVUS_WRITE_INTERVAL_MS must be in [0, 5000]")
        if not 1 <= self.milvus_search_slots <= 64:
            problems.append("WEIR_CACHE_MILVUS_SEARCH_SLOTS must be in [1, 64]")
        if self.purge_interval_s <= 0:
            problems.append("WEIR_CACHE_PURGE_INTERVAL_S must be > 0")
        return problems
