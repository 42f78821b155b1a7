"""Per-model provider health, fed by ReportOutcome: consecutive failures, cooldowns, EWMA latency.

Rules:
- A success resets the consecutive-failure count, ends any cooldown and updates the latency EWMA
  (latency of failed calls is not averaged: a timeout says nothing about a healthy model's speed).
- A failure counts against the model unless the provider blamed the request itself (HTTP 400, 413, 422:
  malformed or oversized request), which says nothing about the model's health.
- After `failure_threshold` consecutive failures the model cools down for
  `cooldown_base_s * 2 ** (failures - failure_threshold)` seconds, at most `cooldown_max_s`.
- A Retry-After from the provider is honoured at once, whatever the failure count: the cooldown lasts at
  least that long (and may exceed `cooldown_max_s`, since the provider asked for it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})
_MAX_DOUBLINGS = 30


@dataclass(frozen=True)
class HealthPolicy:
    """How failures turn into cooldowns and how fast the latency average moves."""

    failure_threshold: int = 3
    cooldown_base_s: float = 5.0
    cooldown_max_s: float = 300.0
    latency_alpha: float = 0.2

    def validate(self) -> list[str]:
        problems = []
        if self.failure_threshold < 1:
            problems.append("failure_threshold must be >= 1")
        if self.cooldown_base_s <= 0 or self.cooldown_max_s < self.cooldown_base_s:
            problems.append("need 0 < cooldown_base_s <= cooldown_max_s")
        if not 0 < self.latency_alpha <= 1:
            problems.append("latency_alpha must be in (0, 1]")
        return problems


@dataclass
class ModelHealth:
    """What the router knows about one model's recent calls."""

    consecutive_failures: int = 0
    cooldown_until: float = 0.0  # clock time; 0 = not cooling down
    latency_ms: float = 0.0  # EWMA over successful calls; 0 = no sample yet
    last_status: int = 0
    retry_after_s: float = 0.0  # the last Retry-After the provider sent while failing


class HealthBook:
    """Health records of every model that has been reported on. Not thread-safe: one event loop owns it."""

    def __init__(self, policy: HealthPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or HealthPolicy()
        problems = self.policy.validate()
        if problems:
            raise ValueError("; ".join(problems))
        self.clock = clock
        self._records: dict[str, ModelHealth] = {}

    def get(self, model_id: str) -> ModelHealth | None:
        return self._records.get(model_id)

    def cooldown_remaining(self, model_id: str, now: float) -> float:
        """Seconds of cooldown left for `model_id` at clock time `now` (0 when it is usable)."""
        rec = self._records.get(model_id)
        if rec is None or rec.cooldown_until <= now:
            return 0.0
        return rec.cooldown_until - now

    def latency_ms(self, model_id: str) -> float:
        rec = self._records.get(model_id)
        return rec.latency_ms if rec is not None else 0.0

    def record(
        self, model_id: str, *, success: bool, latency_ms: float = 0.0, http_status: int = 0,
        retry_after_s: float = 0.0,
    ) -> ModelHealth:
        """Folds one call's outcome into the model's record and returns the record."""
        rec = self._records.get(model_id)
        if rec is None:
            rec = self._records[model_id] = ModelHealth()
        rec.last_status = http_status
        if success:
            rec.consecutive_failures = 0
            rec.cooldown_until = 0.0
            rec.retry_after_s = 0.0
            if latency_ms > 0:
                a = self.policy.latency_alpha
                rec.latency_ms = latency_ms if rec.latency_ms == 0 else a * latency_ms + (1 - a) * rec.latency_ms
            return rec
        if http_status in REQUEST_FAULT_STATUSES:
            return rec
        rec.consecutive_failures += 1
        rec.retry_after_s = retry_after_s
        p = self.policy
        cooldown = 0.0
        if rec.consecutive_failures >= p.failure_threshold:
            doublings = min(rec.consecutive_failures - p.failure_threshold, _MAX_DOUBLINGS)
            cooldown = min(p.cooldown_max_s, p.cooldown_base_s * 2**doublings)
        cooldown = max(cooldown, retry_after_s)
        if cooldown > 0:
            rec.cooldown_until = max(rec.cooldown_until, self.clock() + cooldown)
        return rec
