"""The semantic tier in Milvus (a server, or Milvus Lite running in this process).

Layout:
- one collection per embedding model (``<prefix>_<model slug>_<hash>``), so vectors of different models
  never meet; its dimension is fixed by the first vector stored;
- one partition per tenant (``t_<sha256(tenant)[:32]>``). Every search names exactly the caller's
  partition, AND filters on the tenant field, AND the rows returned are checked against the tenant
  once more, so no single forgotten clause can leak another tenant's answers. (Milvus Lite's partition
  key is hash buckets plus a filter, i.e. only a filter; hence explicit partitions.)
- a COSINE HNSW index on the vector (the best dense index Milvus Lite has; FAISS-backed per segment)
  and an INVERTED index on context_key.

Rows: id (entry id), tenant, context_key, model, question, answer (base64 of the serialized
CachedAnswer), created and expires (ms). Milvus does not expire rows: searches filter on
``expires > now`` and a periodic purge deletes expired rows.

pymilvus is blocking, so its calls run in a small thread pool; with Milvus Lite writes are serialized
(it does not support concurrent writers to one collection). On a Milvus server the searches and the writes
(every miss makes one of each) skip the pool once their collection and partition are known: they go over
grpc.aio from the event loop (`_AsyncMilvus`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np

from services.cache.settings import CacheSettings
from weir.kit import metrics
from weir.kit.lru import LruCache

log = logging.getLogger("weir.cache.semantic")

T = TypeVar("T")

VARCHAR_MAX = 65535  # Milvus' VARCHAR limit, in bytes
_QUERY_LIMIT = 16384  # Milvus' largest query window
IDLE_FLUSH_S = 1.0  # Milvus Lite: pending writes are flushed once writes pause this long
POOL_SIZE = 4  # threads running pymilvus calls
WRITE_BATCH = 256  # rows written in one Milvus call at most
SEARCH_BATCH = 64  # query vectors in one Milvus search at most

SEARCHES = metrics.counter("weir_cache_milvus_searches", "Search calls sent to Milvus (one may carry many lookups)")
SEARCHED = metrics.counter("weir_cache_milvus_searched_vectors", "Query vectors searched in Milvus")
WRITES = metrics.counter("weir_cache_milvus_writes", "Upsert calls sent to Milvus (one may carry many rows)")
WRITTEN = metrics.counter("weir_cache_milvus_written_rows", "Rows upserted into Milvus")
SECONDS = metrics.histogram("weir_cache_milvus_seconds",
                            "Milvus calls as the cache waits for them (a search or an upsert, with every lookup or "
                            "row it carries), failed ones included", ("operation",))
_SEARCH_SECONDS, _UPSERT_SECONDS = SECONDS.labels("search"), SECONDS.labels("upsert")
_SLUG = re.compile(r"[^A-Za-z0-9]+")


class MilvusUnavailable(Exception):
    """Milvus is not connected or a call failed; the semantic tier degrades."""


class DimensionMismatch(ValueError):
    """The vector's dimension differs from the dimension of its model's collection."""

    def __init__(self, model_id: str, expected: int, got: int) -> None:
        super().__init__(f"embedding model {model_id!r} has dimension {expected} in the cache, got {got}")
        self.expected = expected
        self.got = got


@dataclass(frozen=True)
class Row:
    """One semantic entry to write."""

    entry_id: str
    tenant: str
    context_key: str
    model: str
    question: str
    answer: bytes
    created_ms: int
    expires_ms: int
    vector: np.ndarray


class _Scope(NamedTuple):
    """What one Milvus search is restricted to: searches with the same scope can share a call."""

    model_id: str
    tenant: str
    context_key: str
    dim: int


@dataclass(frozen=True)
class Candidate:
    """One search hit of the caller's tenant and context."""

    entry_id: str
    similarity: float
    question: str
    answer: bytes


def quote(value: str) -> str:
    """A Milvus filter string literal (callers reject control characters up front)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_answer(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def fits(row: Row) -> bool:
    """Whether the row's text fields fit Milvus' VARCHAR limit."""
    return len(row.question.encode()) <= VARCHAR_MAX and 4 * ((len(row.answer) + 2) // 3) <= VARCHAR_MAX


class SemanticTier:
    """The semantic tier over one MilvusClient."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.uri = settings.resolved_milvus_uri
        self._pool = ThreadPoolExecutor(max_workers=max(POOL_SIZE, settings.milvus_search_slots + 1),
                                        thread_name_prefix="weir-milvus")
        self._client: Any = None
        self._rt = settings.milvus_timeout_s  # reads: a stalled search degrades quickly
        self._wt = settings.milvus_write_timeout_s  # writes, flushes, invalidations: they must land
        # Milvus Lite takes one writer at a time; a server takes the pool's worth.
        self._write_lock = asyncio.Semaphore(1 if settings.milvus_is_lite else POOL_SIZE)
        self._dims: dict[str, int] = {}  # collection -> dimension
        self._partitions: set[tuple[str, str]] = set()
        self._schema_lock = threading.RLock()  # creating collections and partitions from pool threads
        self._pending: dict[str, int] = {}  # collection -> rows written since its last flush
        self._connect_error = "not connected yet"
        self._last_write = 0.0
        self._last_write_start = 0.0  # when the last write call went out (monotonic)
        self._last_purge = time.monotonic()
        self._last_error_log = 0.0
        self._queue: list[tuple[Row, str, asyncio.Future[str]]] = []  # rows waiting for the next write
        self._writer: asyncio.Task[None] | None = None
        # Searches waiting for a slot, by scope (model, tenant, context, dimension), oldest scope first.
        self._waiting: dict[_Scope, list[tuple[np.ndarray, asyncio.Future[list[Candidate]]]]] = {}
        self._free_slots = settings.milvus_search_slots  # searches that may go out now
        self._busy: set[_Scope] = set()  # scopes with a search out
        self._searches: set[asyncio.Task[None]] = set()
        self._raw: _AsyncMilvus | None = None  # a Milvus server: searches and writes over grpc.aio, no thread hop
        self._schemas: dict[str, dict[str, Any]] = {}  # collection -> its schema, for writes over grpc.aio

    # ---- connection ------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._client is not None

    @property
    def unavailable_reason(self) -> str:
        return self._connect_error

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def connect(self) -> bool:
        """Opens the client and loads the existing collections; False (and logged) when Milvus is not there."""
        try:
            self._client = await self._run(self._open)
            if self._raw is None and _AsyncMilvus.serves(self.uri):
                self._raw = _AsyncMilvus(self.uri, self.settings.milvus_token, self._client)
        except Exception as exc:  # any failure to reach Milvus degrades the tier
            self._client = None
            self._connect_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("milvus unavailable; the semantic tier degrades",
                        extra={"uri": self.safe_uri(), "error": self._connect_error})
            return False
        log.info("milvus connected", extra={"uri": self.safe_uri(), "lite": self.settings.milvus_is_lite,
                                            "collections": sorted(self._dims)})
        return True

    def safe_uri(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.uri)

    def _open(self) -> Any:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing, at info level
        from pymilvus import MilvusClient

        if self.settings.milvus_is_lite:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"timeout": self._rt * 5}  # connecting
        if self.settings.milvus_token:
            kwargs["token"] = self.settings.milvus_token
        client = MilvusClient(self.uri, **kwargs)
        prefix = self.settings.milvus_collection_prefix + "_"
        for name in client.list_collections():
            if name.startswith(prefix):
                self._adopt(client, name)
        return client

    def _adopt(self, client: Any, name: str) -> int:
        """Loads an existing collection, learns its dimension; Lite: flushes what the WAL replayed."""
        desc = client.describe_collection(name, timeout=self._rt)
        dim = next(int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector")
        client.load_collection(name, timeout=self._wt)
        if self.settings.milvus_is_lite:
            client.flush(name, timeout=self._wt)
        self._dims[name] = dim
        return dim

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():  # rows already accepted are written first
            await asyncio.wait([self._writer], timeout=self._wt)
        if self._raw is not None:
            await self._raw.close()
            self._raw = None
        client, self._client = self._client, None
        if client is not None:
            async with self._write_lock:
                await self._run(self._flush_all, client)
                await self._run(client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _flush_all(self, client: Any) -> None:
        if self.settings.resolved_flush_rows:
            for name, pending in self._pending.items():
                if pending:
                    client.flush(name, timeout=self._wt)
        self._pending.clear()

    def _require(self) -> Any:
        client = self._client
        if client is None:
            raise MilvusUnavailable(self._connect_error)
        return client

    def note_error(self, what: str, exc: BaseException) -> str:
        """Logs a failed call (at most every 10 s) and returns a short reason."""
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
        now = time.monotonic()
        if now - self._last_error_log > 10.0:
            self._last_error_log = now
            log.warning("milvus call failed; the semantic tier degrades", extra={"op": what, "error": reason})
        return reason

    # ---- naming ----------------------------------------------------------------------------------

    def collection_name(self, model_id: str) -> str:
        slug = _SLUG.sub("_", model_id).strip("_")[:48] or "model"
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:10]
        return f"{self.settings.milvus_collection_prefix}_{slug}_{digest}"

    @staticmethod
    def partition_name(tenant: str) -> str:
        return "t_" + hashlib.sha256(tenant.encode()).hexdigest()[:32]

    # ---- collections -----------------------------------------------------------------------------

    def _known_dim(self, client: Any, name: str, wait: bool = True) -> int | None:
        """The collection's dimension, adopting a collection another process created; None if absent.

        `wait=False` (searches): while this process is creating a collection (seconds on a server) it holds
        nothing yet, so the search does not wait for the creation; it finds nothing."""
        dim = self._dims.get(name)
        if dim is None:
            if not self._schema_lock.acquire(blocking=wait):
                return None
            try:  # a collection half-created by a concurrent write must not be loaded
                dim = self._dims.get(name)
                if dim is None and client.has_collection(name, timeout=self._rt):
                    dim = self._adopt(client, name)
            finally:
                self._schema_lock.release()
        return dim

    def _create_collection(self, client: Any, name: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="weir semantic cache")
        for field, kind, params in _FIELDS:
            schema.add_field(field, DataType(kind), is_primary=field == "id",
                             **{k: dim if v is None else v for k, v in params.items()})
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE",
                        params={"M": 16, "efConstruction": 200})
        index.add_index(field_name="context_key", index_type=self._scalar_index(client))
        client.create_collection(name, schema=schema, consistency_level=self.settings.resolved_consistency,
                                 timeout=self._wt)
        # sync=False: do not poll the build state (the collection is empty; Milvus Lite lacks the RPC).
        client.create_index(name, index, timeout=self._wt, sync=False)
        client.load_collection(name, timeout=self._wt)
        self._dims[name] = dim
        log.info("semantic collection created", extra={"collection": name, "dim": dim})

    @staticmethod
    def _scalar_index(client: Any) -> str:
        """INVERTED where the server has it (Milvus >= 2.4, Milvus Lite); Trie on a Milvus 2.3 server."""
        version = str(client.get_server_version())
        return "Trie" if re.match(r"v?2\.[0-3]\.", version) else "INVERTED"

    def check_dim(self, model_id: str, dim: int) -> None:
        """Raises DimensionMismatch when the model's known collection has another dimension."""
        expected = self._dims.get(self.collection_name(model_id))
        if expected is not None and expected != dim:
            raise DimensionMismatch(model_id, expected, dim)

    # ---- search ----------------------------------------------------------------------------------

    async def search(self, tenant: str, context_key: str, model_id: str, vector: np.ndarray) -> list[Candidate]:
        """The caller's nearest live entries in the same context, best first (at most top_k).

        A search goes out at once unless one of the same scope (tenant, context, model) is out, or all slots
        are taken. Lookups that wait go out together as one multi-vector search when it returns: a Milvus 2.3
        search call costs ~4-5 server CPU-ms and ~1.3 in pymilvus for one vector, ~0.5-0.7 and ~0.16 per
        vector for sixteen."""
        self._require()
        fut: asyncio.Future[list[Candidate]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(_Scope(model_id, tenant, context_key, int(vector.shape[0])), []).append(
            (vector, fut))
        self._dispatch()
        return await fut

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        for scope in list(self._waiting):
            if not self._free_slots:
                return
            if scope in self._busy:  # its lookups wait for the search out, then go together
                continue
            waiting = self._waiting.pop(scope)
            if len(waiting) > SEARCH_BATCH:
                self._waiting[scope] = waiting[SEARCH_BATCH:]
            batch = [(v, f) for v, f in waiting[:SEARCH_BATCH] if not f.done()]  # done: the caller gave up
            if not batch:
                continue
            self._free_slots -= 1
            self._busy.add(scope)
            task = loop.create_task(self._search_batch(scope, batch))
            self._searches.add(task)
            task.add_done_callback(self._searches.discard)

    async def _search_batch(self, scope: _Scope,
                            batch: list[tuple[np.ndarray, asyncio.Future[list[Candidate]]]]) -> None:
        try:
            client = self._require()
            vectors = [v for v, _ in batch]
            name, partition = self.collection_name(scope.model_id), self.partition_name(scope.tenant)
            raw = self._direct(name, partition, scope.dim)
            with _SEARCH_SECONDS.time():
                if raw is not None:
                    results = await self._search_async(raw, scope, name, partition, vectors)
                else:  # first search of a collection or partition: learn it (blocking pymilvus calls) in the pool
                    results = await self._run(self._search, client, scope, vectors)
        except Exception as exc:  # every search of the batch fails alike
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), found in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(found)
        finally:
            self._free_slots += 1
            self._busy.discard(scope)
            self._dispatch()

    def _search(self, client: Any, scope: _Scope, vectors: list[np.ndarray]) -> list[list[Candidate]]:
        """One Milvus search for the vectors of one scope; each one's candidates, best first."""
        name = self.collection_name(scope.model_id)
        dim = self._known_dim(client, name, wait=False)
        if dim is None:
            return [[] for _ in vectors]
        if dim != scope.dim:
            raise DimensionMismatch(scope.model_id, dim, scope.dim)
        partition = self.partition_name(scope.tenant)
        if (name, partition) not in self._partitions:
            if not client.has_partition(name, partition, timeout=self._rt):
                return [[] for _ in vectors]
            self._partitions.add((name, partition))
        now = int(time.time() * 1000)
        SEARCHES.inc()
        SEARCHED.inc(len(vectors))
        result = client.search(
            name,
            data=vectors,
            limit=self.settings.top_k,
            partition_names=[partition],
            filter=self._filter(scope, now),
            output_fields=list(_OUTPUT_FIELDS),
            search_params=self._search_params(),
            timeout=self._rt,
        )
        hits = [[(str(hit["id"]), float(hit["distance"]), hit["entity"]) for hit in result[i]]
                if result and i < len(result) else [] for i in range(len(vectors))]
        return [self._candidates(scope, name, now, rows) for rows in hits]

    @staticmethod
    def _filter(scope: _Scope, now_ms: int) -> str:
        return f"tenant == {quote(scope.tenant)} and context_key == {quote(scope.context_key)} and expires > {now_ms}"

    def _search_params(self) -> dict[str, Any]:
        return {"metric_type": "COSINE", "params": {"ef": self.settings.hnsw_ef}}

    @staticmethod
    def _candidates(scope: _Scope, name: str, now_ms: int,
                    rows: list[tuple[str, float, dict[str, Any]]]) -> list[Candidate]:
        """One query's hits as candidates, best first; a row outside the scope is dropped (and logged)."""
        out: list[Candidate] = []
        for entry_id, similarity, entity in rows:
            # Defence in depth: the partition and the filter already scope the search.
            if (entity["tenant"] != scope.tenant or entity["context_key"] != scope.context_key
                    or entity["expires"] <= now_ms):
                log.error("milvus returned a row outside the search scope; dropped",
                          extra={"collection": name, "entry_id": entry_id})
                continue
            out.append(Candidate(entry_id=entry_id, similarity=similarity, question=str(entity["question"]),
                                 answer=base64.b64decode(entity["answer"])))
        out.sort(key=lambda c: c.similarity, reverse=True)
        return out

    def _direct(self, name: str, partition: str, dim: int) -> _AsyncMilvus | None:
        """The grpc.aio path, where the collection (of this dimension) and the partition are known to exist."""
        if self._raw is not None and self._dims.get(name) == dim and (name, partition) in self._partitions:
            return self._raw
        return None

    async def _search_async(self, raw: _AsyncMilvus, scope: _Scope, name: str, partition: str,
                            vectors: list[np.ndarray]) -> list[list[Candidate]]:
        """The same search as `_search`, sent over grpc.aio from the event loop (the collection `name` and its
        `partition` are known to exist)."""
        now = int(time.time() * 1000)
        SEARCHES.inc()
        SEARCHED.inc(len(vectors))
        hits = await raw.search(name, partition, vectors, self._filter(scope, now), self.settings.top_k,
                                self._search_params(), self._rt)
        return [self._candidates(scope, name, now, rows) for rows in hits]

    # ---- writes ----------------------------------------------------------------------------------

    async def upsert(self, row: Row, model_id: str) -> str:
        """Writes the row into its model's collection (created on first use); returns the collection.

        Rows stored while a write is out, or within WEIR_CACHE_MILVUS_WRITE_INTERVAL_MS of its start, are
        queued and written together, one Milvus call per model and tenant: no waiting when writes are rare, one
        call for many when they are not (a Milvus 2.3 upsert costs ~3 CPU-ms in the server and ~1.5 in pymilvus
        for one row as for dozens)."""
        self._require()
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((row, model_id, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())
        return await fut

    async def _write_queued(self) -> None:
        while self._queue:
            wait = self._last_write_start + self.settings.milvus_write_interval_ms / 1000 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_write_start = time.monotonic()
            batch, self._queue = self._queue[:WRITE_BATCH], self._queue[WRITE_BATCH:]
            groups: dict[tuple[str, str, int], list[tuple[Row, asyncio.Future[str]]]] = {}
            for row, model_id, fut in batch:
                groups.setdefault((model_id, row.tenant, int(row.vector.shape[0])), []).append((row, fut))
            for (model_id, tenant, dim), items in groups.items():
                try:
                    client = self._require()
                    rows = [r for r, _ in items]
                    name, partition = self.collection_name(model_id), self.partition_name(tenant)
                    raw, schema = self._direct(name, partition, dim), self._schemas.get(name)
                    async with self._write_lock:
                        with _UPSERT_SECONDS.time():
                            if raw is not None and schema is not None:
                                await self._upsert_async(raw, schema, name, partition, rows)
                            else:  # the first write of a collection or partition creates it (blocking) in the pool
                                name = await self._run(self._upsert, client, rows, model_id)
                except Exception as exc:  # every row of the group fails alike
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, fut in items:
                    if not fut.done():
                        fut.set_result(name)

    def _upsert(self, client: Any, rows: list[Row], model_id: str) -> str:
        """Writes rows of one tenant and one dimension in one call."""
        name = self.collection_name(model_id)
        dim = self._known_dim(client, name)
        given = int(rows[0].vector.shape[0])
        if dim is None:
            with self._schema_lock:
                dim = self._known_dim(client, name)
                if dim is None:
                    self._create_collection(client, name, given)
        if dim is not None and dim != given:
            raise DimensionMismatch(model_id, dim, given)
        partition = self.partition_name(rows[0].tenant)
        if (name, partition) not in self._partitions:
            with self._schema_lock:
                if not client.has_partition(name, partition, timeout=self._rt):
                    client.create_partition(name, partition, timeout=self._wt)
                self._partitions.add((name, partition))
        entities = self._entities(rows)
        client.upsert(name, entities, partition_name=partition, timeout=self._wt)
        self._wrote(client, name, len(entities))
        if self._raw is not None and name not in self._schemas:
            self._schemas[name] = client.describe_collection(name, timeout=self._rt)
        return name

    @staticmethod
    def _entities(rows: list[Row]) -> list[dict[str, Any]]:
        """The rows as Milvus entities, counted as one write; the same entry twice in a batch: the last wins."""
        latest = {row.entry_id: row for row in rows}
        WRITES.inc()
        WRITTEN.inc(len(latest))
        return [{
            "id": row.entry_id,
            "tenant": row.tenant,
            "context_key": row.context_key,
            "model": row.model,
            "question": row.question,
            "answer": encode_answer(row.answer),
            "created": row.created_ms,
            "expires": row.expires_ms,
            "vector": row.vector,
        } for row in latest.values()]

    async def _upsert_async(self, raw: _AsyncMilvus, schema: dict[str, Any], name: str, partition: str,
                            rows: list[Row]) -> None:
        """The same write as `_upsert`, sent over grpc.aio from the event loop (collection and partition exist;
        a server needs no flushes)."""
        await raw.upsert(name, partition, self._entities(rows), schema, self._wt)

    def _wrote(self, client: Any, name: str, rows: int) -> None:
        """Milvus Lite searches unflushed rows slowly (Python, ~25 us a row): flush every few writes."""
        every = self.settings.resolved_flush_rows
        if not every:
            return
        self._last_write = time.monotonic()
        self._pending[name] = self._pending.get(name, 0) + rows
        if self._pending[name] >= every:
            client.flush(name, timeout=self._wt)
            self._pending[name] = 0

    async def delete_ids(self, tenant: str, by_collection: dict[str, list[str]]) -> None:
        """Deletes entries by id from the tenant's partition of the named collections."""
        client = self._require()
        async with self._write_lock:
            await self._run(self._delete_ids, client, tenant, by_collection)

    def _delete_ids(self, client: Any, tenant: str, by_collection: dict[str, list[str]]) -> None:
        partition = self.partition_name(tenant)
        for name, ids in by_collection.items():
            if not ids or self._known_dim(client, name) is None:
                continue
            if not client.has_partition(name, partition, timeout=self._rt):
                continue
            client.delete(name, ids=ids, partition_name=partition, timeout=self._wt)
            self._wrote(client, name, len(ids))

    async def delete_where(self, tenant: str, clause: str) -> set[str]:
        """Deletes the tenant's rows matching `clause` ('' = all) in every collection; returns the live ids."""
        client = self._require()
        async with self._write_lock:
            return await self._run(self._delete_where, client, tenant, clause)

    def _delete_where(self, client: Any, tenant: str, clause: str) -> set[str]:
        partition = self.partition_name(tenant)
        expr = f"tenant == {quote(tenant)}" + (f" and {clause}" if clause else "")
        now = int(time.time() * 1000)
        live: set[str] = set()
        for name in list(self._dims):
            if not client.has_partition(name, partition, timeout=self._rt):
                continue
            while True:
                rows = client.query(name, filter=expr, output_fields=["expires"], partition_names=[partition],
                                    limit=_QUERY_LIMIT, timeout=self._wt)
                if not rows:
                    break
                ids = [str(r["id"]) for r in rows]
                live.update(str(r["id"]) for r in rows if int(r["expires"]) > now)
                client.delete(name, ids=ids, partition_name=partition, timeout=self._wt)
                self._wrote(client, name, len(ids))
        return live

    async def maintain(self) -> int:
        """Upkeep, called about once a second: flushes writes idle for a second (Milvus Lite) and, every
        purge interval, deletes expired rows. Returns the rows purged."""
        client = self._require()
        now = time.monotonic()
        purge = now - self._last_purge >= self.settings.purge_interval_s
        idle = any(self._pending.values()) and now - self._last_write >= IDLE_FLUSH_S
        if not purge and not idle:
            return 0
        async with self._write_lock:
            if not purge:
                await self._run(self._flush_all, client)
                return 0
            self._last_purge = now
            return await self._run(self._purge, client)

    def _purge(self, client: Any) -> int:
        now = int(time.time() * 1000)
        purged = 0
        for name in list(self._dims):
            while True:
                rows = client.query(name, filter=f"expires <= {now}", output_fields=["id"],
                                    limit=_QUERY_LIMIT, timeout=self._wt)
                if not rows:
                    break
                ids = [str(r["id"]) for r in rows]
                client.delete(name, ids=ids, timeout=self._wt)
                purged += len(ids)
                self._wrote(client, name, len(ids))
        self._flush_all(client)
        return purged


_OUTPUT_FIELDS = ("tenant", "context_key", "question", "answer", "expires")
_VARCHAR, _INT64, _FLOAT_VECTOR = 21, 5, 101  # pymilvus' DataType and Milvus' schema.proto number them alike
# The collection's fields in order: name, type, parameters (dim None: the collection's dimension).
_FIELDS: tuple[tuple[str, int, dict[str, int | None]], ...] = (
    ("id", _VARCHAR, {"max_length": 64}),
    ("tenant", _VARCHAR, {"max_length": 1024}),
    ("context_key", _VARCHAR, {"max_length": 64}),
    ("model", _VARCHAR, {"max_length": 1024}),
    ("question", _VARCHAR, {"max_length": VARCHAR_MAX}),
    ("answer", _VARCHAR, {"max_length": VARCHAR_MAX}),
    ("created", _INT64, {}),
    ("expires", _INT64, {}),
    ("vector", _FLOAT_VECTOR, {"dim": None}),
)
_TEMPLATES = 4096  # search request templates kept (one per collection, partition and search parameters)


def _varint(n: int) -> bytes:
    """n as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _own_schema(schema: dict[str, Any]) -> bool:
    """Whether a described collection has exactly the fields `_create_collection` gives it (no dynamic field)."""
    fields = schema.get("fields") or []
    return (not schema.get("enable_dynamic_field") and not schema.get("struct_array_fields")
            and not schema.get("functions")
            and [(f.get("name"), int(f.get("type", 0))) for f in fields] == [(n, k) for n, k, _ in _FIELDS])


class _AsyncMilvus:
    """Milvus searches and writes over grpc.aio on the caller's event loop, with pymilvus' protos.

    pymilvus' MilvusClient is blocking: every call pays a hop to a pool thread and back, its decorator stack and
    its result objects (~1 ms per lookup on the 2-core box). Searches and upserts are the hot path (a miss makes
    one of each), so they go straight to the server's Search and Upsert RPCs; everything else (schema,
    partitions, deletes, purges) stays on MilvusClient. Only for a Milvus server reached over plain gRPC
    (http:// or host:port); Milvus Lite and TLS keep the pool.

    The requests are the ones pymilvus' builders (`Prepare`) make, built for less: Prepare costs ≈ 0.13 ms of
    Python per search and ≈ 0.18 ms per one-row upsert, most of it checking and encoding what never changes. A
    search copies a request Prepare built once for its collection, partition and parameters, and sets its filter,
    vectors and consistency; a write of a collection this service created fills the columns directly. Tests
    check both against Prepare's output, byte for byte."""

    def __init__(self, uri: str, token: str, client: Any) -> None:
        from pymilvus.grpc_gen import milvus_pb2_grpc

        # pymilvus keeps each collection's last write timestamp per server address: a Session-consistency search
        # waits for this process' own writes by sending it (as MilvusClient.search does).
        try:
            self._endpoint = str(client._get_connection().server_address)
        except Exception:  # another pymilvus: the searches fall back to the collection's consistency alone
            self._endpoint = ""

        self._channel = grpc.aio.insecure_channel(uri.split("://", 1)[-1].rstrip("/"), options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.keepalive_time_ms", 55_000)])
        self._stub = milvus_pb2_grpc.MilvusServiceStub(self._channel)
        self._metadata = (("authorization", base64.b64encode(token.encode()).decode()),) if token else ()
        self._templates: LruCache[Any] = LruCache(_TEMPLATES)  # SearchRequests built by Prepare, to copy

    @staticmethod
    def serves(uri: str) -> bool:
        return not uri.endswith(".db") and (uri.startswith("http://") or "://" not in uri)

    async def search(self, collection: str, partition: str, vectors: list[np.ndarray], expr: str, limit: int,
                     params: dict[str, Any], deadline_s: float) -> list[list[tuple[str, float, dict[str, Any]]]]:
        from pymilvus.client import ts_utils

        consistency: dict[str, Any] = {}  # the guarantee timestamp, as MilvusClient.search computes it
        default = ts_utils.construct_guarantee_ts(collection, consistency, self._endpoint, "")
        request = self.search_request(collection, partition, vectors, expr, limit, params, default, consistency)
        resp = await self._stub.Search(request, timeout=deadline_s, metadata=self._metadata)
        if resp.status.code != 0 or resp.status.error_code != 0:
            raise MilvusUnavailable(f"search failed: {resp.status.reason or resp.status.code}")
        data = resp.results
        columns: dict[str, Any] = {}
        for field in data.fields_data:
            scalars = field.scalars
            kind = scalars.WhichOneof("data")
            columns[field.field_name] = list(getattr(scalars, kind).data) if kind else []
        ids, scores = list(data.ids.str_id.data), list(data.scores)
        out: list[list[tuple[str, float, dict[str, Any]]]] = []
        start = 0
        for count in data.topks:
            out.append([(ids[k], scores[k], {f: columns[f][k] for f in _OUTPUT_FIELDS})
                        for k in range(start, start + count)])
            start += count
        out.extend([] for _ in range(len(vectors) - len(out)))
        return out

    async def upsert(self, collection: str, partition: str, entities: list[dict[str, Any]], schema: dict[str, Any],
                     deadline_s: float) -> None:
        from pymilvus.client import ts_utils

        request = self.upsert_request(collection, partition, entities, schema)
        resp = await self._stub.Upsert(request, timeout=deadline_s, metadata=self._metadata)
        if resp.status.code != 0 or resp.status.error_code != 0:
            raise MilvusUnavailable(f"upsert failed: {resp.status.reason or resp.status.code}")
        # A Session-consistency search of this process then waits for this write (as after MilvusClient.upsert).
        ts_utils.update_collection_ts(collection, resp.timestamp, self._endpoint, "")

    def search_request(self, collection: str, partition: str, vectors: list[np.ndarray], expr: str, limit: int,
                       params: dict[str, Any], default: bool, consistency: dict[str, Any]) -> Any:
        """The SearchRequest Prepare.search_requests_with_expr makes for these arguments."""
        from pymilvus.client.prepare import Prepare
        from pymilvus.grpc_gen import common_pb2, milvus_pb2

        if any(v.dtype != np.float32 for v in vectors):  # only float32 is encoded here
            return Prepare.search_requests_with_expr(
                collection, "vector", params, limit, data=vectors, expr=expr, partition_names=[partition],
                output_fields=list(_OUTPUT_FIELDS), use_default_consistency=default, **consistency)
        key = (collection, partition, limit, repr(params))
        template = self._templates.get(key)
        if template is None:
            template = Prepare.search_requests_with_expr(
                collection, "vector", params, limit, data=vectors[:1], expr="", partition_names=[partition],
                output_fields=list(_OUTPUT_FIELDS))
            self._templates.put(key, template)
        request = milvus_pb2.SearchRequest()
        request.CopyFrom(template)
        request.dsl = expr
        request.nq = len(vectors)
        request.placeholder_group = common_pb2.PlaceholderGroup(placeholders=[common_pb2.PlaceholderValue(
            tag="$0", type=common_pb2.PlaceholderType.FloatVector,
            values=[v.astype("<f4", copy=False).tobytes() for v in vectors])]).SerializeToString()
        request.guarantee_timestamp = consistency.get("guarantee_timestamp", 0)
        request.use_default_consistency = default
        request.consistency_level = consistency.get("consistency_level", 0)
        return request

    @staticmethod
    def upsert_request(collection: str, partition: str, entities: list[dict[str, Any]],
                       schema: dict[str, Any]) -> Any:
        """The UpsertRequest Prepare.row_upsert_param makes for these rows (`SemanticTier._entities`) and the
        collection's described schema."""
        from pymilvus.client.prepare import Prepare
        from pymilvus.grpc_gen import milvus_pb2

        if not _own_schema(schema) or any(e["vector"].dtype != np.float32 for e in entities):
            return Prepare.row_upsert_param(
                collection, entities, partition, schema.get("fields"), schema.get("struct_array_fields", []),
                enable_dynamic=schema.get("enable_dynamic_field", False),
                schema_timestamp=schema.get("update_timestamp", 0))
        request = milvus_pb2.UpsertRequest(collection_name=collection, partition_name=partition,
                                           num_rows=len(entities), schema_timestamp=schema.get("update_timestamp", 0))
        for name, kind, _ in _FIELDS:
            column = request.fields_data.add(field_name=name, type=kind)
            if kind == _VARCHAR:
                column.scalars.string_data.data.extend([e[name] for e in entities])
            elif kind == _INT64:
                column.scalars.long_data.data.extend([e[name] for e in entities])
            else:  # FloatArray's packed field 1 parsed from the raw floats: 5x faster than a list of floats
                column.vectors.dim = int(entities[0][name].shape[0]) if entities else 0
                floats = b"".join(e[name].astype("<f4", copy=False).tobytes() for e in entities)
                column.vectors.float_vector.MergeFromString(b"\x0a" + _varint(len(floats)) + floats)
        return request

    async def close(self) -> None:
        await self._channel.close()
