"""`weir cache eval`: the labelled evaluation set through the real embedder and cache services.

    weir cache eval [--split dev|test|holdout|blind2|...|blind9|vocab|all] [--threshold T]
                    [--milvus lite|server|URI] [--failures]

The set (services/cache/eval/*.jsonl, written for this project) holds single-turn question pairs and
multi-turn conversation pairs, each labelled ``should_hit`` (a paraphrase or near-repeat: serving the
stored answer is right) or ``trap`` with a category (negation, numbers, dates, ...: serving it is wrong).
Splits: ``dev`` (the verifier is tuned on it) and ``test``, ``holdout``, ``blind2`` ... ``blind9`` (each held
out when written; a split's first run is its unseen estimate, see docs/cache.md).

For every pair the runner stores the first side through ``Store`` (with its embedding from ``EmbedBatch``)
in a tenant of its own, then asks for the second side the way the gateway does: ``LookupExact``, then
``LookupSemantic``. It prints the share of should-hit pairs served, the share of traps served (overall,
per category, multi-turn), and the trade-off curve against the similarity threshold with and without
the verifier. The curve reuses the candidates the service returned (similarity and stored question)
and applies the same verifier function, so the row at the service's threshold equals the live result.
The cases run in shares of ``CASES_PER_CACHE``, each through a cache process with a collection of its own (a
tenant per case is a Milvus partition per case), and the shares' results are added up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from services.cache import judge
from services.cache.eval import SPLITS as LABELLED_SPLITS
from services.cache.judge import Policy
from weir.cache.v1 import cache_service_pb2 as cache_pb
from weir.cache.v1 import cache_service_pb2_grpc as cache_grpc
from weir.common.v1 import types_pb2
from weir.embedder.v1 import embedder_service_pb2 as emb_pb
from weir.embedder.v1 import embedder_service_pb2_grpc as emb_grpc
from weir.kit import supervisor
from weir.kit.clients import open_channel
from weir.kit.redis_local import start_local_redis

EVAL_DIR = Path(__file__).resolve().parent
PAIRS = EVAL_DIR / "pairs.jsonl"
CONVERSATIONS = EVAL_DIR / "conversations.jsonl"
SPLITS = (*LABELLED_SPLITS, "all")
DEFAULT_CURVE = tuple(round(0.60 + 0.02 * i, 2) for i in range(20))  # 0.60 .. 0.98
EMBED_CHUNK = 128
JUDGE_CHUNK = 64
BOUNDED_STALENESS_S = 6.0  # Milvus' common.gracefulTime (5 s) and a margin
CONCURRENCY = 8
#: Cases (so tenants, so Milvus partitions) per cache process and collection (`Services.cache`).
CASES_PER_CACHE = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    """One labelled pair: store `stored`, then ask `query` (both as chat messages)."""

    id: str
    split: str
    label: str  # should_hit | trap
    category: str
    domain: str
    stored: tuple[tuple[str, str], ...]  # (role, content), ending with the user question
    query: tuple[tuple[str, str], ...]

    @property
    def multi_turn(self) -> bool:
        return self.id.startswith("mt-")

    @property
    def tenant(self) -> str:
        return f"eval:{self.id}"


@dataclass
class Outcome:
    """What the services answered for one case."""

    case: Case
    served: bool = False
    tier: str = ""  # exact | semantic | ""
    reason: str = ""
    # The best candidate the semantic tier returned (there is at most one: one tenant per case).
    similarity: float | None = None
    candidate_question: str = ""
    stored_reason: str = ""
    #: The paraphrase judge's score of (query, candidate), when the judge is on and there is a candidate.
    judge_score: float | None = None

    @property
    def exact(self) -> bool:
        return self.tier == "exact"


@dataclass
class Results:
    outcomes: list[Outcome]
    #: The live service's policy (its thresholds, and whether and how the judge has a say).
    policy: Policy
    stats: cache_pb.GetStatsResponse | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _messages(raw: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(raw, str):
        return (("user", raw),)
    return tuple((str(m["role"]), str(m["content"])) for m in raw)


def load_cases(split: str = "all", paths: Sequence[Path] = (PAIRS, CONVERSATIONS)) -> list[Case]:
    """The labelled cases of `split` (one of SPLITS; "all" for every one) from the JSONL files."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cases = []
    for path in paths:
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            doc = orjson.loads(line)
            if doc["label"] not in ("should_hit", "trap"):
                raise ValueError(f"{path.name}:{line_no}: label must be should_hit or trap")
            case = Case(id=doc["id"], split=doc["split"], label=doc["label"], category=doc["category"],
                        domain=doc["domain"], stored=_messages(doc["stored"]), query=_messages(doc["query"]))
            if split in ("all", case.split):
                cases.append(case)
    return cases


def chat_request(messages: Sequence[tuple[str, str]]) -> types_pb2.ChatRequest:
    """A deterministic chat request (temperature 0) of the given messages."""
    req = types_pb2.ChatRequest(model="fake-small")
    req.sampling.temperature = 0.0
    for role, content in messages:
        req.messages.add(role=role, content=content)
    return req


def last_user(messages: Sequence[tuple[str, str]]) -> str:
    return next(content for role, content in reversed(messages) if role == "user")


# ---- running the cases through the services ---------------------------------------------------------


async def embed_all(stub: emb_grpc.EmbedderServiceAsyncStub, texts: list[str]) -> dict[str, types_pb2.Embedding]:
    """Embeddings of the distinct texts, EmbedBatch by EmbedBatch."""
    distinct = sorted(set(texts))
    out: dict[str, types_pb2.Embedding] = {}
    for i in range(0, len(distinct), EMBED_CHUNK):
        chunk = distinct[i:i + EMBED_CHUNK]
        resp = await stub.EmbedBatch(emb_pb.EmbedBatchRequest(texts=chunk), timeout=120)
        width = resp.dim * 4
        for j, text in enumerate(chunk):
            out[text] = types_pb2.Embedding(vector=resp.vectors[j * width:(j + 1) * width], dim=resp.dim,
                                            model_id=resp.model_id)
    return out


async def _bounded(items: Sequence[T], work: Callable[[T], Awaitable[None]]) -> None:
    """`work` on every item, CONCURRENCY at a time."""
    queue = list(items)

    async def worker() -> None:
        while queue:
            await work(queue.pop())

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def run_cases(cache_addr: str, embedder_addr: str, cases: Sequence[Case], policy: Policy,
                    settle_s: float = 0.0) -> Results:
    """Stores each case's first side in its own tenant, then looks the second side up as the gateway does.

    `settle_s`: a pause between the two phases, for a Milvus server whose collections use Bounded
    consistency (a new row becomes searchable within its 5 s staleness bound)."""
    outcomes = [Outcome(case) for case in cases]
    seconds: dict[str, float] = {}
    async with open_channel(embedder_addr) as emb_ch, open_channel(cache_addr) as cache_ch:
        embedder = emb_grpc.EmbedderServiceStub(emb_ch)
        cache = cache_grpc.CacheServiceStub(cache_ch)
        t0 = time.perf_counter()
        vectors = await embed_all(embedder, [last_user(m) for c in cases for m in (c.stored, c.query)])
        seconds["embed"] = time.perf_counter() - t0

        async def store(o: Outcome) -> None:
            c = o.case
            resp = await cache.Store(cache_pb.StoreRequest(
                tenant=c.tenant, request=chat_request(c.stored),
                answer=cache_pb.CachedAnswer(content=f"answer to {c.id}", model="fake-small", finish_reason="stop"),
                embedding=vectors[last_user(c.stored)]), timeout=60)
            o.stored_reason = resp.reason
            if not resp.stored:
                raise RuntimeError(f"{c.id}: not stored ({resp.reason})")

        async def lookup(o: Outcome) -> None:
            c = o.case
            req = chat_request(c.query)
            exact = await cache.LookupExact(cache_pb.LookupExactRequest(tenant=c.tenant, request=req), timeout=10)
            sem = await cache.LookupSemantic(cache_pb.LookupSemanticRequest(
                tenant=c.tenant, request=req, embedding=vectors[last_user(c.query)]), timeout=10)
            if sem.candidates:
                o.similarity = sem.candidates[0].similarity
                o.candidate_question = sem.candidates[0].question
            if exact.hit:
                o.served, o.tier, o.reason = True, "exact", exact.reason
            elif sem.hit:
                o.served, o.tier, o.reason = True, "semantic", sem.reason
            else:
                o.reason = sem.reason

        t0 = time.perf_counter()
        await _bounded(outcomes, store)
        seconds["store"] = time.perf_counter() - t0
        await asyncio.sleep(settle_s)
        t0 = time.perf_counter()
        await _bounded(outcomes, lookup)
        seconds["lookup"] = time.perf_counter() - t0
        if policy.judge:  # the judge's score of every case's candidate, for the curve at other thresholds
            t0 = time.perf_counter()
            judged = [o for o in outcomes if o.candidate_question and not o.exact]
            for i in range(0, len(judged), JUDGE_CHUNK):
                chunk = judged[i:i + JUDGE_CHUNK]
                resp = await embedder.ScorePairs(emb_pb.ScorePairsRequest(pairs=[
                    emb_pb.TextPair(a=last_user(o.case.query), b=o.candidate_question) for o in chunk],
                    reading=policy.pair_reading), timeout=120)
                for o, score in zip(chunk, resp.scores, strict=True):
                    o.judge_score = score
            seconds["judge"] = time.perf_counter() - t0
        stats = await cache.GetStats(cache_pb.GetStatsRequest())
    return Results(outcomes=outcomes, policy=policy, stats=stats, seconds=seconds)


@dataclass(frozen=True)
class Crowded:
    """Each single-turn query looked up among every stored question of its domain (one tenant per split and
    domain), as in a tenant that holds many questions on one topic; what was served, if anything."""

    cases: tuple[Case, ...]
    served: tuple[str | None, ...]  # the stored question whose answer was served, per case (None: nothing)
    stored: int  # distinct stored questions
    tenants: int


async def run_crowded(cache_addr: str, embedder_addr: str, cases: Sequence[Case], settle_s: float = 0.0) -> Crowded:
    """Stores every distinct stored question once in its split's and domain's tenant (its answer names it), then
    looks each query up in that tenant the way the gateway does. A query may now be served the answer of
    *another* question of its topic: the mistake a one-pair tenant (`run_cases`) cannot show."""
    single = [c for c in cases if not c.multi_turn]

    def tenant(c: Case) -> str:
        return f"crowd:{c.split}:{c.domain}"

    entries = sorted({(tenant(c), last_user(c.stored)) for c in single})
    async with open_channel(embedder_addr) as emb_ch, open_channel(cache_addr) as cache_ch:
        embedder = emb_grpc.EmbedderServiceStub(emb_ch)
        cache = cache_grpc.CacheServiceStub(cache_ch)
        vectors = await embed_all(embedder, [t for _, t in entries] + [last_user(c.query) for c in single])

        async def store(entry: tuple[str, str]) -> None:
            owner, text = entry
            resp = await cache.Store(cache_pb.StoreRequest(
                tenant=owner, request=chat_request((("user", text),)),
                answer=cache_pb.CachedAnswer(content=text, model="fake-small", finish_reason="stop"),
                embedding=vectors[text]), timeout=60)
            if not resp.stored:
                raise RuntimeError(f"{text!r}: not stored ({resp.reason})")

        await _bounded(entries, store)
        await asyncio.sleep(settle_s)
        served: list[str | None] = [None] * len(single)

        async def lookup(i: int) -> None:
            c = single[i]
            req = chat_request(c.query)
            exact = await cache.LookupExact(cache_pb.LookupExactRequest(tenant=tenant(c), request=req), timeout=10)
            if exact.hit:
                served[i] = exact.answer.content
                return
            sem = await cache.LookupSemantic(cache_pb.LookupSemanticRequest(
                tenant=tenant(c), request=req, embedding=vectors[last_user(c.query)]), timeout=10)
            if sem.hit:
                served[i] = sem.answer.content

        await _bounded(range(len(single)), lookup)
    return Crowded(tuple(single), tuple(served), len(entries), len({t for t, _ in entries}))


def crowded_report(result: Crowded, failures: bool = False) -> str:
    """Should-hits served their own answer, traps served, and queries served another question's answer."""
    counts: Counter[tuple[str, str]] = Counter()
    others: list[tuple[Case, str]] = []
    for c, text in zip(result.cases, result.served, strict=True):
        outcome = "none" if text is None else "own" if text == last_user(c.stored) else "other"
        counts[(c.label, outcome)] += 1
        if outcome == "other" and text is not None:
            others.append((c, text))
    hits = sum(counts[("should_hit", k)] for k in ("own", "other", "none"))
    traps = sum(counts[("trap", k)] for k in ("own", "other", "none"))
    wrong = counts[("should_hit", "other")] + counts[("trap", "other")]

    def pct(n: int, d: int) -> str:
        return f"{100 * n / d:5.1f}% of {d}" if d else "  n/a"

    lines = [f"crowded: {len(result.cases)} single-turn queries, each against every stored question of its domain "
             f"({result.stored} stored questions in {result.tenants} tenants)",
             f"  should-hit served its own answer       {pct(counts[('should_hit', 'own')], hits)}",
             f"  trap served its stored answer          {pct(counts[('trap', 'own')], traps)}",
             f"  another question's answer served       {pct(wrong, len(result.cases))}"
             f"  (should-hit queries {counts[('should_hit', 'other')]}, trap queries {counts[('trap', 'other')]})"]
    if failures and others:
        lines.append("  served another question's answer:")
        lines += [f"    {c.id:<10} {last_user(c.query)!r} <- {text!r}" for c, text in others]
    return "\n".join(lines)


# ---- metrics ----------------------------------------------------------------------------------------


def served_at(o: Outcome, policy: Policy) -> bool:
    """Whether the case would be served under `policy`."""
    if o.exact:
        return True
    if o.similarity is None:
        return False
    reading = policy.read(last_user(o.case.query), o.candidate_question, o.similarity)
    if reading.kind in (judge.VETO, judge.OVERRULE):
        return policy.settle(reading, o.similarity, o.judge_score)[0]
    return reading.kind == judge.SERVE


def at_threshold(policy: Policy, threshold: float) -> Policy:
    """The live policy with the rules' similarity threshold moved (the judge's gate never above it)."""
    return dataclasses.replace(policy, threshold=threshold, gate=min(policy.gate, threshold))


@dataclass(frozen=True)
class Rates:
    hit: float  # share of should-hit pairs served
    trap: float  # share of traps served
    n_hit: int
    n_trap: int


def rates(outcomes: Sequence[Outcome], served: Sequence[bool]) -> Rates:
    hits = [s for o, s in zip(outcomes, served, strict=True) if o.case.label == "should_hit"]
    traps = [s for o, s in zip(outcomes, served, strict=True) if o.case.label == "trap"]
    return Rates(hit=sum(hits) / len(hits) if hits else float("nan"),
                 trap=sum(traps) / len(traps) if traps else float("nan"), n_hit=len(hits), n_trap=len(traps))


def _pct(x: float) -> str:
    return "   n/a" if x != x else f"{100 * x:5.1f}%"


def report(results: Results, curve: Sequence[float] = DEFAULT_CURVE, failures: bool = False) -> str:
    """The human-readable report: live rates, per-category traps, the threshold curve, optionally failures."""
    lines: list[str] = []
    outs = results.outcomes
    single = [o for o in outs if not o.case.multi_turn]
    multi = [o for o in outs if o.case.multi_turn]
    for name, group in (("single-turn", single), ("multi-turn", multi), ("all", outs)):
        r = rates(group, [o.served for o in group])
        lines.append(f"{name:<12} should-hit served {_pct(r.hit)} of {r.n_hit:<4} traps served {_pct(r.trap)} "
                     f"of {r.n_trap}")
    tiers = Counter(o.tier for o in outs if o.served)
    lines.append(f"served by tier: exact {tiers['exact']}, semantic {tiers['semantic']}")

    lines.append("\ntraps served by category:")
    by_cat: dict[str, list[Outcome]] = defaultdict(list)
    for o in outs:
        if o.case.label == "trap":
            by_cat[("mt:" if o.case.multi_turn else "") + o.case.category].append(o)
    for cat in sorted(by_cat):
        group = by_cat[cat]
        served = sum(o.served for o in group)
        lines.append(f"  {cat:<22} {served:>3} / {len(group):<3} {_pct(served / len(group))}")

    if results.stats is not None:
        refusals = {k: v for k, v in sorted(results.stats.refusals_by_check.items()) if v}
        lines.append("\nverifier refusals by check: " + (", ".join(f"{k} {v}" for k, v in refusals.items()) or "none"))

    live = results.policy
    judged = live.judge and any(o.judge_score is not None for o in outs)
    lines.append(f"\ntrade-off curve (single-turn + multi-turn; live threshold {live.threshold:.2f}"
                 + (f", judge gate {live.gate:.2f}, accept {live.accept:g}, veto {live.veto:g}" if judged else "")
                 + "):")
    lines.append("  threshold | without verifier: hit    trap | with verifier: hit    trap"
                 + (" | verifier and judge: hit    trap" if judged else ""))
    rules_only = dataclasses.replace(live, judge=False)
    for t in curve:
        plain = rates(outs, [o.exact or (o.similarity is not None and o.similarity >= t) for o in outs])
        checked = rates(outs, [served_at(o, at_threshold(rules_only, t)) for o in outs])
        row = (f"  {t:9.2f} |               {_pct(plain.hit)}  {_pct(plain.trap)} |"
               f"            {_pct(checked.hit)}  {_pct(checked.trap)}")
        if judged:
            both = rates(outs, [served_at(o, at_threshold(live, t)) for o in outs])
            row += f" |                  {_pct(both.hit)}  {_pct(both.trap)}"
        lines.append(row + ("  <- live" if abs(t - live.threshold) < 1e-9 else ""))
    live_curve = live if judged else rules_only
    mismatched = [o.case.id for o in outs if o.served != served_at(o, live_curve)]
    if mismatched:
        lines.append(f"  NOTE: the curve disagrees with the live service on {len(mismatched)} cases: "
                     + ", ".join(mismatched[:10]))

    if failures:
        lines.append("\nshould-hit pairs not served:")
        for o in outs:
            if o.case.label == "should_hit" and not o.served:
                sim = f"{o.similarity:.3f}" if o.similarity is not None else "  -  "
                lines.append(f"  {o.case.id} {sim} {o.reason[:90]:<90} | {last_user(o.case.stored)} "
                             f"|| {last_user(o.case.query)}")
        lines.append("traps served:")
        for o in outs:
            if o.case.label == "trap" and o.served:
                lines.append(f"  {o.case.id} [{o.case.category}] {o.tier} {o.similarity} | "
                             f"{last_user(o.case.stored)} || {last_user(o.case.query)}")
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in results.seconds.items())
    lines.append(f"\n{len(outs)} cases ({seconds})")
    return "\n".join(lines)


# ---- starting the services --------------------------------------------------------------------------


@dataclass
class Services:
    """The eval's private Redis and embedder, and a way to run a cache process for a share of the cases."""

    work: Path
    env: dict[str, str]
    embedder: str
    #: Milvus Lite: each cache gets a file of its own (a server or URI is shared, one collection per cache).
    lite: bool
    #: The cache's policy as its settings make it (the services inherit this environment, so does the policy).
    policy: Policy

    @contextlib.contextmanager
    def cache(self, name: str) -> Iterator[str]:
        """A cache process of its own collection (and, on Milvus Lite, its own file); yields its address.

        Every case gets a tenant, and every tenant a partition: one collection for thousands of them is slow on
        Milvus Lite (its metadata is rewritten on each new partition) and beyond a Milvus server's 4,096."""
        env = {**self.env, "WEIR_CACHE_MILVUS_COLLECTION_PREFIX": f"weir_eval_{name}"}
        if self.lite:
            env["WEIR_MILVUS_URI"] = str(self.work / "state" / "milvus" / f"eval-{name}.db")
        proc = supervisor.start(f"cache-{name}", supervisor.python_module("services.cache"), env,
                                log_dir=self.work / "logs")
        try:
            yield proc.grpc
        finally:
            supervisor.stop_all([proc])


@contextlib.contextmanager
def services(work: Path, threshold: float | None, milvus: str, use_judge: bool = True) -> Iterator[Services]:
    """A private Redis, the embedder and the Milvus per `milvus`; caches are started per share of the cases."""
    from services.cache.settings import CacheSettings
    from weir.kit.config import load

    procs: list[supervisor.Process] = []
    redis = start_local_redis(work / "redis")
    env = {"WEIR_STATE_DIR": str(work / "state"), "WEIR_REDIS_URL": redis.url, "WEIR_LOG_LEVEL": "warning",
           "WEIR_CACHE_PORT": "0", "WEIR_EMBEDDER_PORT": "0", "WEIR_CACHE_REDIS_PREFIX": "weir-eval:"}
    if threshold is not None:
        env["WEIR_CACHE_SIM_THRESHOLD"] = str(threshold)
    try:
        if milvus == "server":
            from services.cache.milvus_local import start_milvus

            procs.append(start_milvus(work / "milvus-server", log_dir=work / "logs"))
            env["WEIR_MILVUS_URI"] = procs[-1].info["uri"]
        elif milvus != "lite":
            env["WEIR_MILVUS_URI"] = milvus
        else:
            env["WEIR_MILVUS_URI"] = str(work / "state" / "milvus" / "eval.db")  # Services.cache: one per cache
        env["WEIR_CACHE_JUDGE"] = env["WEIR_EMBEDDER_JUDGE"] = "true" if use_judge else "false"
        # Decisions, not latency: eight lookups at once on two cores may keep the judge longer than the
        # service's default deadline, and a lookup that stops waiting would be decided by the rules alone.
        env["WEIR_CACHE_JUDGE_TIMEOUT_S"] = "10"
        procs.append(supervisor.start("embedder", supervisor.python_module("services.embedder"), env,
                                      log_dir=work / "logs"))
        env["WEIR_EMBEDDER_ADDR"] = procs[-1].grpc
        yield Services(work, env, procs[-1].grpc, milvus == "lite",
                       Policy.from_settings(load(CacheSettings, {**os.environ, **env})))
    finally:
        supervisor.stop_all(procs)
        redis.stop()


def merge(parts: Sequence[Results]) -> Results:
    """One result of several runs over disjoint cases (outcomes in order, stats and times added up)."""
    stats = cache_pb.GetStatsResponse()
    seconds: dict[str, float] = defaultdict(float)
    for part in parts:
        if part.stats is not None:
            for check, n in part.stats.refusals_by_check.items():
                stats.refusals_by_check[check] += n
        for k, v in part.seconds.items():
            seconds[k] += v
    return Results(outcomes=[o for part in parts for o in part.outcomes], policy=parts[0].policy, stats=stats,
                   seconds=dict(seconds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weir cache eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=SPLITS, default="all", help="which pairs to run (default: all)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="WEIR_CACHE_SIM_THRESHOLD for the cache (default: the cache's default)")
    parser.add_argument("--milvus", default="lite",
                        help="lite (a Milvus Lite file in a temp dir), server (the bundled Milvus standalone "
                             "started here) or a Milvus URI (collections are namespaced per run)")
    parser.add_argument("--judge", choices=("on", "off"), default="on",
                        help="whether the cache asks the embedder's paraphrase judge (WEIR_CACHE_JUDGE; default on)")
    parser.add_argument("--failures", action="store_true", help="list should-hit misses and traps served")
    parser.add_argument("--json", type=Path, default=None, help="also write per-case outcomes as JSON lines")
    parser.add_argument("--crowded", action="store_true",
                        help="also look each single-turn query up among every stored question of its domain "
                             "(one tenant per split and domain) and count answers of other questions served")
    args = parser.parse_args(argv)

    cases = load_cases(args.split)
    work = Path(tempfile.mkdtemp(prefix="weir-cache-eval-"))
    crowded: Crowded | None = None
    try:
        with services(work, args.threshold, args.milvus, args.judge == "on") as svc:
            settle = 0.0 if args.milvus == "lite" else BOUNDED_STALENESS_S
            parts = []
            for i in range(0, len(cases), CASES_PER_CACHE):
                with svc.cache(f"c{i // CASES_PER_CACHE}") as cache_addr:
                    parts.append(asyncio.run(run_cases(cache_addr, svc.embedder, cases[i:i + CASES_PER_CACHE],
                                                       svc.policy, settle)))
            results = merge(parts)
            if args.crowded:
                with svc.cache("crowded") as cache_addr:
                    crowded = asyncio.run(run_crowded(cache_addr, svc.embedder, cases, settle))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"cache eval: split={args.split}, milvus={args.milvus}, judge={args.judge}")
    if crowded is not None:
        print(crowded_report(crowded, failures=args.failures))
    print(report(results, failures=args.failures))
    if args.json is not None:
        with args.json.open("wb") as f:
            for o in results.outcomes:
                f.write(orjson.dumps({"id": o.case.id, "label": o.case.label, "category": o.case.category,
                                      "served": o.served, "tier": o.tier, "similarity": o.similarity,
                                      "judge": o.judge_score, "reason": o.reason}) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
