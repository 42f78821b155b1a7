"""The paraphrase judge as the cache sees it: the embedder's ScorePairs, and when its word counts.

The rules (services/cache/verifier.py) are precise on what they know and blind to vocabulary: on pairs they
have never seen they refuse most paraphrases written in other words. The judge, a cross-encoder trained on
the project's labelled pairs (weir/model/judge_train.py) and run by the embedder, reads both questions at
once. The cache asks it about the candidates the rules leave open, in one call per lookup:

- a candidate refused only by checks the judge may overrule (`WEIR_CACHE_JUDGE_OVERRULES`: by default scope,
  intent, order, entities and content; numbers, units, dates, negation, roles and opposites always decide) is
  served when the judge scores it at least `WEIR_CACHE_JUDGE_ACCEPT` (0.99); a lower similarity gate for the judge
  (`WEIR_CACHE_JUDGE_SIM_THRESHOLD` below the rules' 0.70) lets it read paraphrases the embedding scores low;
- a candidate the rules accept is refused when the judge scores it below `WEIR_CACHE_JUDGE_VETO` (0.05;
  0 turns the veto off), unless both texts normalise alike (case, punctuation, spacing): the same question.

The defaults were chosen on splits the judge was not trained on (docs/cache.md, "The paraphrase judge").

When the judge is off, not loaded by the embedder, slow or unreachable, the rules decide alone (a lookup
never waits longer than `WEIR_CACHE_JUDGE_TIMEOUT_S` for it, and once it is found unreachable or not loaded it
is not asked again for `RETRY_S`), and the lookup's reason says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import cast

import grpc

from services.cache import verifier
from services.cache.settings import CacheSettings
from weir.embedder.v1 import embedder_service_pb2 as embedder_pb
from weir.embedder.v1 import embedder_service_pb2_grpc as embedder_grpc
from weir.kit import metrics
from weir.kit.clients import ServiceClient
from weir.kit.errors import parse_rpc_error
from weir.kit.lru import LruCache, text_key

log = logging.getLogger("weir.cache.judge")

#: After the judge failed, lookups go without it for this long before it is asked again.
RETRY_S = 5.0

#: Pairs the cache wanted scored, by what came of it: `scored` by the embedder's judge, `remembered` from the
#: LRU, or decided by the rules alone because the judge was `unavailable` (gone, not loaded, or left alone after
#: a failure), `slow` (past WEIR_CACHE_JUDGE_TIMEOUT_S) or gave an `invalid` answer. A rate of the last three
#: is verification running degraded, which the lookups' reasons also say one by one.
PAIRS = metrics.counter("weir_cache_judge_pairs", "Pairs the cache asked the paraphrase judge about, by outcome",
                        ("outcome",))
_SCORED, _REMEMBERED, _UNAVAILABLE, _SLOW, _INVALID = (
    PAIRS.labels(o) for o in ("scored", "remembered", "unavailable", "slow", "invalid"))
#: Each ScorePairs call the cache makes (the pairs its LRU lacks, in one call), answered or not: the wait a
#: first-time semantic hit adds for the judge.
_SECONDS = metrics.histogram("weir_cache_judge_seconds", "ScorePairs calls to the paraphrase judge, as the cache "
                             "waits for them (failed and timed-out ones included)")


#: What the rules make of a candidate (`Policy.read`).
BELOW, SERVE, REFUSE, VETO, OVERRULE = "below", "serve", "refuse", "veto", "overrule"


@dataclass(frozen=True)
class Reading:
    """A candidate as the rules see it: `kind` says whether the judge has a say (VETO, OVERRULE) or not."""

    kind: str
    verdict: verifier.Verdict


@dataclass(frozen=True)
class Policy:
    """When the judge's word counts; the service and `weir cache eval` decide with this one object."""

    threshold: float  # similarity the rules need
    judge: bool  # whether the judge is asked at all
    gate: float  # similarity the judge needs to overrule (the lower of this and threshold counts)
    accept: float  # score at or above which the judge overrules a refusal by one of `overrules`
    veto: float  # score below which the judge refuses what the rules accept; 0: never
    overrules: tuple[str, ...]  # checks the judge may overrule
    reading: str = "stored_first"  # how the judge reads a pair: "stored_first" or "both" (the lower)

    @classmethod
    def from_settings(cls, st: CacheSettings) -> Policy:
        return cls(threshold=st.sim_threshold, judge=st.judge, gate=st.judge_sim_threshold,
                   accept=st.judge_accept, veto=st.judge_veto, overrules=st.judge_overrules,
                   reading=st.judge_reading)

    @property
    def pair_reading(self) -> embedder_pb.PairReading.ValueType:
        """`reading` as ScorePairsRequest.reading (pairs are sent as (question, cached question))."""
        return embedder_pb.PAIR_READING_B_FIRST if self.reading == "stored_first" else embedder_pb.PAIR_READING_BOTH

    @cached_property
    def hard_checks(self) -> tuple[tuple[str, verifier.Check], ...]:
        """The checks the judge never overrules."""
        return tuple((n, c) for n, c in verifier.CHECKS if n not in self.overrules)

    @property
    def floor(self) -> float:
        """The lowest similarity any candidate is read at."""
        return min(self.threshold, self.gate) if self.judge else self.threshold

    def read(self, query: str, stored: str, similarity: float) -> Reading:
        """The rules' verdict on a candidate and whether the judge is asked about it."""
        if similarity < self.floor:
            return Reading(BELOW, verifier.Verdict(False, "below_threshold", f"{similarity:.3f} < {self.floor:.3f}"))
        verdict = verifier.verify(query, stored)
        if verdict.ok and similarity >= self.threshold:
            # Texts that normalise alike are the same question: nothing for the judge to veto.
            vetoable = self.judge and self.veto > 0 and verdict.detail != verifier.IDENTICAL
            return Reading(VETO if vetoable else SERVE, verdict)
        may_overrule = verdict.ok or (verdict.check in self.overrules
                                      and verifier.verify(query, stored, self.hard_checks).ok)
        if self.judge and may_overrule:
            return Reading(OVERRULE, verdict)
        if verdict.ok:  # accepted by the rules below their threshold, and the judge has no say
            return Reading(BELOW, verifier.Verdict(False, "below_threshold",
                                                   f"{similarity:.3f} < {self.threshold:.3f}"))
        return Reading(REFUSE, verdict)

    def settle(self, reading: Reading, similarity: float, score: float | None, unavailable: str = ""
               ) -> tuple[bool, verifier.Verdict]:
        """(served, verdict) of a candidate the judge had a say on (VETO or OVERRULE); score None: no judge."""
        verdict = reading.verdict
        note = f"judge {score:.3f}" if score is not None else f"judge {unavailable or 'unavailable'}"
        if reading.kind == VETO:
            if score is None or score >= self.veto:
                return True, verifier.Verdict(True, verifier.ACCEPTED, f"{verdict.detail}; {note}")
            return False, verifier.Verdict(False, "judge", f"{score:.3f} < veto {self.veto:g}")
        if score is not None and score >= self.accept:
            if verdict.ok:
                return True, verifier.Verdict(True, verifier.ACCEPTED, f"{note} vouches below the similarity "
                                              f"threshold ({similarity:.3f} < {self.threshold:.3f})")
            return True, verifier.Verdict(True, verifier.ACCEPTED,
                                          f"{note} overrules {verdict.check} ({verdict.detail})")
        if verdict.ok:  # the rules accept, but below their similarity threshold
            return False, verifier.Verdict(False, "judge", f"similarity {similarity:.3f} < {self.threshold:.3f}; "
                                           f"{note}" + (f" < {self.accept:g}" if score is not None else ""))
        return False, verifier.Verdict(False, verdict.check, f"{verdict.detail}; {note}"
                                       + (f" < {self.accept:g}" if score is not None else ""))


@dataclass(frozen=True)
class Scores:
    """The judge's answer for one lookup: a score per pair, or why there is none."""

    scores: tuple[float, ...] = ()
    judge_id: str = ""
    #: Why the judge did not score ("" when it did): "off", "not loaded", "unavailable (...)".
    unavailable: str = ""


class JudgeClient:
    """ScorePairs on the embedder, with a deadline, a back-off after failures, and an LRU of recent scores.

    The LRU (`WEIR_CACHE_JUDGE_LRU` pairs) spares the hop and the model run when the same question meets the
    same cached one again, which is what a popular paraphrase does."""

    def __init__(self, addr: str, timeout_s: float, lru_size: int = 4096,
                 reading: embedder_pb.PairReading.ValueType = embedder_pb.PAIR_READING_BOTH,
                 mux: bool = False) -> None:
        self.addr = addr
        self.mux = mux
        self.timeout_s = timeout_s
        self.reading = reading
        self._lru: LruCache[float] = LruCache(lru_size)
        self._judge_id = ""
        self._service: ServiceClient | None = None
        self._stub: embedder_grpc.EmbedderServiceStub | None = None
        self._down_until = 0.0
        self._down_reason = ""

    def _client(self) -> embedder_grpc.EmbedderServiceStub:
        if self._stub is None:
            self._service = ServiceClient(self.addr, self.mux)
            self._stub = self._service.stub(embedder_grpc.EmbedderServiceStub,
                                           embedder_pb.DESCRIPTOR.services_by_name["EmbedderService"])
        return self._stub

    async def score(self, pairs: Sequence[tuple[str, str]]) -> Scores:
        keys = [text_key(f"{a}\x00{b}") for a, b in pairs]
        known = [self._lru.get(k) for k in keys]
        missing = [i for i, v in enumerate(known) if v is None]
        if len(missing) < len(pairs):
            _REMEMBERED.inc(len(pairs) - len(missing))
        if not missing:
            return Scores(tuple(v for v in known if v is not None), self._judge_id)
        now = time.monotonic()
        if now < self._down_until:
            _UNAVAILABLE.inc(len(missing))
            return Scores(unavailable=self._down_reason)
        request = embedder_pb.ScorePairsRequest(pairs=[embedder_pb.TextPair(a=pairs[i][0], b=pairs[i][1])
                                                       for i in missing], reading=self.reading)
        try:
            with _SECONDS.time():
                call = cast("Awaitable[embedder_pb.ScorePairsResponse]",
                            self._client().ScorePairs(request, timeout=self.timeout_s))
                resp = await call
        except grpc.RpcError as exc:
            err = parse_rpc_error(exc)
            if err.reason == "JUDGE_NOT_LOADED":
                reason, outcome = "not loaded by the embedder", _UNAVAILABLE
            elif err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                reason, outcome = f"slower than {self.timeout_s * 1000:.0f} ms", _SLOW
            elif err.code == grpc.StatusCode.INVALID_ARGUMENT:
                reason, outcome = f"unavailable ({err.code.name})", _INVALID
            else:
                reason, outcome = f"unavailable ({err.code.name})", _UNAVAILABLE
            outcome.inc(len(missing))
            # A bad pair says nothing about the judge, and a slow answer only about this lookup: only a judge
            # that is gone or not loaded is left alone for a while.
            if err.code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._down_until, self._down_reason = now + RETRY_S, reason
                log.warning("judge unavailable: the verifier's rules decide alone",
                            extra={"reason": reason, "error": err.message, "retry_s": RETRY_S})
            return Scores(unavailable=reason)
        if len(resp.scores) != len(missing):
            _INVALID.inc(len(missing))
            return Scores(unavailable=f"answered {len(resp.scores)} scores for {len(missing)} pairs")
        _SCORED.inc(len(missing))
        self._judge_id = resp.judge_id
        scores = list(known)
        for i, score in zip(missing, resp.scores, strict=True):
            scores[i] = score
            self._lru.put(keys[i], score)
        return Scores(tuple(v for v in scores if v is not None), resp.judge_id)

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
