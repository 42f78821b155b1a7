"""The router's decisions, free of gRPC: which models a request goes to, in which order, and why.

Route(requested model) gives an ordered plan (the first target is tried first, the rest are fallbacks):

- A concrete model id is passed through: [that model] + the other models of the same or a stronger tier,
  cheapest first for this request (price of prompt_tokens + max_tokens; ties by list price, then by
  measured latency).
- A virtual model (e.g. "auto") asks the scorer for p(strong) from the request's embedding and token
  counts and compares it with the virtual model's threshold, shifted by the quality bias:
  bias b in [-1, 1] (the global default plus the request's value, clamped) pulls the threshold linearly
  toward 0 for b > 0 (at +1 everything goes to the strong model) and toward 1 for b < 0 (at -1 everything
  goes to the weak one): t' = t * (1 - b) for b >= 0, t' = t + (1 - t) * -b for b < 0.
  The plan is [chosen] + the other tier's model and the configured fallbacks, models at least as strong
  as the chosen one first.
  An embedding that is missing, malformed, of another dimension or from another embedding model than
  the scorer's is not used: the length prior (see scorer.py) decides, and the reason says so. The reason
  always names what scored the request: "(length prior)", "(length prior: <why>)" or "(scorer <name>)".

Then, for either kind:
- models the caller's key may not use (`allowed_models`; a virtual model listed there allows its members)
  are dropped;
- models whose context window is smaller than prompt_tokens + max_tokens are dropped;
- models whose per-deployment rate window (rpm/tpm in the model table, enforced by the gateway) is nearly full
  (`full_share`, see usage.py) move behind the models with room, in order; never dropped;
- models in cooldown (see health.py) move to the back of the plan, soonest available first; they are never
  dropped, so a plan is never empty because of health alone.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import grpc
import numpy as np

from services.router.health import HealthBook, ModelHealth
from services.router.scorer import Scorer, StrongScorer, accepts_model
from services.router.usage import DeploymentUsage
from weir.kit.errors import WeirError, invalid_argument
from weir.mesh_config import MeshConfig, Model, VirtualModel

TIER_RANK = {"weak": 0, "strong": 1}
_F32_LE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of Route: an ordered plan, the primary's tier, p(strong) and why."""

    plan: tuple[Model, ...]
    tier: str
    strong_probability: float
    reason: str


def effective_threshold(threshold: float, bias: float) -> float:
    """The virtual model's threshold shifted by a quality bias in [-1, 1] (see the module docstring)."""
    if bias >= 0:
        return threshold * (1.0 - bias)
    return threshold + (1.0 - threshold) * -bias


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Router:
    """Routing policy over one model table; health is shared with ReportOutcome through `health`."""

    def __init__(
        self, mesh: MeshConfig, scorer: StrongScorer, prior: Scorer, health: HealthBook, quality_bias: float = 0.0,
        usage: DeploymentUsage | None = None, full_share: float = 0.9,
    ) -> None:
        if not -1.0 <= quality_bias <= 1.0:
            raise ValueError(f"quality_bias must be in [-1, 1], got {quality_bias}")
        self.mesh = mesh
        self.scorer = scorer
        self.prior = prior
        self.health = health
        self.quality_bias = quality_bias
        self.usage = usage
        self.full_share = full_share
        self._models = mesh.models
        self._virtual = mesh.virtual_models
        self._known = ", ".join([*mesh.virtual_models, *mesh.models])
        self._members = {v.id: frozenset((v.strong, v.weak, *v.fallbacks)) for v in self._virtual.values()}
        # Static candidate lists: per virtual model and choice, per concrete model its passthrough fallbacks.
        self._virtual_candidates = {
            (v.id, strong): self._virtual_order(v, strong) for v in self._virtual.values() for strong in (True, False)
        }
        self._stronger_or_equal = {
            m.id: [o for o in self._models.values() if o.id != m.id and TIER_RANK[o.tier] >= TIER_RANK[m.tier]]
            for m in self._models.values()
        }

    def _virtual_order(self, v: VirtualModel, strong: bool) -> tuple[Model, ...]:
        chosen = self._models[v.strong if strong else v.weak]
        rest: list[Model] = []
        for ref in (v.weak if strong else v.strong, *v.fallbacks):
            m = self._models[ref]
            if m is not chosen and m not in rest:
                rest.append(m)
        rank = TIER_RANK[chosen.tier]
        rest.sort(key=lambda m: TIER_RANK[m.tier] < rank)  # stable: at least as strong first, config order kept
        return (chosen, *rest)

    # ---- Route ------------------------------------------------------------------------------------------

    def route(
        self,
        requested_model: str,
        *,
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        embedding: bytes = b"",
        embedding_dim: int = 0,
        embedding_model_id: str = "",
        allowed_models: Collection[str] = (),
        quality_bias: float = 0.0,
    ) -> Decision:
        """Plans the targets for one request. Raises WeirError for bad input, unknown or forbidden models."""
        _validate_route(requested_model, prompt_tokens, max_tokens, quality_bias)
        allowed = self._expand_allowed(allowed_models) if allowed_models else None
        need = prompt_tokens + max_tokens
        virtual = self._virtual.get(requested_model)
        p = 0.0
        if virtual is None:
            model = self._models.get(requested_model)
            if model is None:
                raise self._not_found(requested_model)
            if allowed is not None and model.id not in allowed:
                raise _not_allowed(requested_model, allowed_models)
            head = f"{model.id} requested"
            candidates = self._passthrough_order(model, prompt_tokens, max_tokens)
        else:
            if allowed is not None and virtual.id not in allowed and not (self._members[virtual.id] & allowed):
                raise _not_allowed(requested_model, allowed_models)
            p, scored_by = self._strong_probability(
                prompt_tokens, max_tokens, embedding, embedding_dim, embedding_model_id
            )
            bias = min(1.0, max(-1.0, self.quality_bias + quality_bias))
            threshold = effective_threshold(virtual.threshold, bias)
            strong = threshold <= 0.0 or (threshold < 1.0 and p >= threshold)
            candidates = self._virtual_candidates[(virtual.id, strong)]
            chosen = candidates[0]
            bias_note = f" (quality_bias {bias:+.2f})" if bias else ""
            head = (
                f"{virtual.id}: p(strong)={p:.2f}{scored_by} {'>=' if strong else '<'} {threshold:.2f}{bias_note}"
                f" -> {chosen.id} ({chosen.tier})"
            )

        clauses = [head]
        plan: list[Model] = []
        forbidden: list[str] = []
        too_small: list[Model] = []
        for m in candidates:
            if allowed is not None and m.id not in allowed:
                forbidden.append(m.id)
            elif m.context_window < need:
                too_small.append(m)
            else:
                plan.append(m)
        if forbidden and virtual is not None:
            clauses.append("not allowed for this key: " + ", ".join(forbidden))
        if too_small:
            clauses.append(
                f"context window < {need} tokens: " + ", ".join(f"{m.id} ({m.context_window})" for m in too_small)
            )
        if not plan:
            raise _context_exceeded(requested_model, need, too_small)
        if plan[0] is not candidates[0]:
            clauses[-1] += f" -> {plan[0].id} first"

        if self.usage is not None and self.usage.limits:
            full = [(u, m) for m in plan if (u := self.usage.get(m.id)) is not None and u.share >= self.full_share]
            if full:
                first = plan[0]
                full_ids = {m.id for _, m in full}
                plan = [m for m in plan if m.id not in full_ids] + [m for _, m in full]
                clauses.append("; ".join(f"{m.id} at {u.describe()}" for u, m in full))
                if plan[0] is not first:
                    clauses[-1] += f" -> {plan[0].id} first"

        now = self.health.clock()
        cooling: list[tuple[float, Model]] = []
        for m in plan:
            remaining = self.health.cooldown_remaining(m.id, now)
            if remaining > 0:
                cooling.append((remaining, m))
        if cooling:
            first = plan[0]
            cooling.sort(key=lambda c: c[0])
            cooling_ids = {m.id for _, m in cooling}
            plan = [m for m in plan if m.id not in cooling_ids] + [m for _, m in cooling]
            clauses.append("; ".join(_cooldown_note(m.id, remaining, self.health.get(m.id))
                                     for remaining, m in cooling))
            if plan[0] is not first:
                clauses[-1] += f" -> {plan[0].id} first"
        clauses.append("fallbacks: " + ", ".join(m.id for m in plan[1:]) if len(plan) > 1 else "no fallbacks")
        return Decision(plan=tuple(plan), tier=plan[0].tier, strong_probability=p, reason="; ".join(clauses))

    def _strong_probability(
        self, prompt_tokens: int, max_tokens: int, vector: bytes, dim: int, model_id: str
    ) -> tuple[float, str]:
        """p(strong) and a note on what scored it: " (length prior...)" or " (scorer <name>)"."""
        scorer = self.scorer
        if not vector:
            problem = "no embedding"
        elif dim != scorer.dim:
            problem = f"embedding dim {dim} != {scorer.dim}"
        elif len(vector) != 4 * dim:
            problem = f"malformed embedding ({len(vector)} bytes for dim {dim})"
        elif not accepts_model(scorer.embedding_model_id, model_id):
            problem = f"embedding from {model_id}, scorer trained on {scorer.embedding_model_id}"
        else:
            p = scorer.probability(np.frombuffer(vector, dtype=_F32_LE), prompt_tokens, max_tokens)
            if not math.isnan(p):
                return p, " (length prior)" if scorer is self.prior else f" (scorer {scorer.name})"
            problem = "embedding has non-finite values"
        return self.prior.probability(None, prompt_tokens, max_tokens), f" (length prior: {problem})"

    def _passthrough_order(self, model: Model, prompt_tokens: int, max_tokens: int) -> tuple[Model, ...]:
        health = self.health
        others = sorted(
            self._stronger_or_equal[model.id],
            key=lambda m: (
                m.cost_usd(prompt_tokens, max_tokens),
                m.input_usd_per_mtok + m.output_usd_per_mtok,
                health.latency_ms(m.id),
                m.id,
            ),
        )
        return (model, *others)

    def _expand_allowed(self, allowed_models: Collection[str]) -> frozenset[str]:
        """The key's allowed ids plus the members of every virtual model it allows."""
        out = set(allowed_models)
        for ref in allowed_models:
            members = self._members.get(ref)
            if members is not None:
                out |= members
        return frozenset(out)

    def _not_found(self, requested_model: str) -> WeirError:
        return WeirError(
            grpc.StatusCode.NOT_FOUND,
            f"unknown model {requested_model!r}; known models: {self._known}",
            reason="MODEL_NOT_FOUND",
            metadata={"model": requested_model, "known_models": self._known},
        )

    # ---- ReportOutcome ----------------------------------------------------------------------------------

    def report(
        self, model_id: str, provider: str, *, success: bool, latency_ms: float = 0.0, http_status: int = 0,
        retry_after_s: float = 0.0,
    ) -> ModelHealth:
        """Records the outcome of one call to `model_id` (at `provider`, which may be left empty)."""
        violations: list[tuple[str, str]] = []
        if not math.isfinite(latency_ms) or latency_ms < 0:
            violations.append(("latency_ms", f"must be a finite number >= 0, got {latency_ms}"))
        if not math.isfinite(retry_after_s) or retry_after_s < 0:
            violations.append(("retry_after_s", f"must be a finite number >= 0, got {retry_after_s}"))
        if not 0 <= http_status <= 599:
            violations.append(("http_status", f"must be 0 (transport failure) or an HTTP status, got {http_status}"))
        if not model_id:
            violations.append(("target.model", "is required"))
        if violations:
            raise invalid_argument("invalid outcome report: " + "; ".join(f"{f} {d}" for f, d in violations),
                                   *violations)
        model = self._models.get(model_id)
        if model is None:
            if model_id in self._virtual:
                raise invalid_argument(
                    f"{model_id!r} is a virtual model: report the concrete target the plan named",
                    ("target.model", "must be a concrete model id"),
                )
            raise self._not_found(model_id)
        if provider and provider != model.provider:
            raise invalid_argument(
                f"model {model_id!r} is served by provider {model.provider!r}, not {provider!r}",
                ("target.provider", f"must be {model.provider!r} or empty"),
            )
        return self.health.record(
            model_id, success=success, latency_ms=latency_ms, http_status=http_status, retry_after_s=retry_after_s
        )


def _validate_route(requested_model: str, prompt_tokens: int, max_tokens: int, quality_bias: float) -> None:
    violations: list[tuple[str, str]] = []
    if not requested_model:
        violations.append(("requested_model", "is required"))
    if prompt_tokens < 0:
        violations.append(("prompt_tokens", f"must be >= 0, got {prompt_tokens}"))
    if max_tokens < 0:
        violations.append(("max_tokens", f"must be >= 0, got {max_tokens}"))
    if not (math.isfinite(quality_bias) and -1.0 <= quality_bias <= 1.0):
        violations.append(("quality_bias", f"must be in [-1, 1], got {quality_bias}"))
    if violations:
        raise invalid_argument("invalid route request: " + "; ".join(f"{f} {d}" for f, d in violations),
                               *violations)


def _not_allowed(requested_model: str, allowed_models: Collection[str]) -> WeirError:
    allowed = ", ".join(sorted(allowed_models))
    return WeirError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"this key may not use model {requested_model!r}; allowed: {allowed}",
        reason="MODEL_NOT_ALLOWED",
        metadata={"model": requested_model, "allowed_models": allowed},
    )


def _context_exceeded(requested_model: str, need: int, too_small: list[Model]) -> WeirError:
    largest = max((m.context_window for m in too_small), default=0)
    return WeirError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{requested_model!r}: prompt_tokens + max_tokens = {need} exceeds the largest usable context window "
        f"({largest} tokens)",
        reason="CONTEXT_WINDOW_EXCEEDED",
        metadata={"model": requested_model, "needed_tokens": str(need), "context_window": str(largest)},
        field_violations=(("prompt_tokens", f"prompt_tokens + max_tokens must be <= {largest}"),),
    )


def _cooldown_note(model_id: str, remaining: float, rec: ModelHealth | None) -> str:
    failures = rec.consecutive_failures if rec is not None else 0
    note = f"{model_id} in cooldown {math.ceil(remaining)}s after {_plural(failures, 'failure')}"
    if rec is not None and rec.retry_after_s > 0:
        note += f" (retry-after {rec.retry_after_s:g}s)"
    return note
