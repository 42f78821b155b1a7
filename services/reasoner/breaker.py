"""A circuit breaker per deployment (provider + upstream model), inside the reasoner.

The router also keeps health (from ReportOutcome) and moves cooling models to the back of its plans, but
plans made before that lands, or by a router nobody reports to, still name a failing deployment. The
reasoner itself must not hammer it:

- closed: calls go through; `threshold` consecutive failed calls open the breaker.
- open: calls are skipped (the plan moves straight on to its next target) until the cool-down ends.
- half-open: after the cool-down ONE call (the probe) goes through; other calls still skip. A successful
  probe closes the breaker; a failed one opens it again for twice the previous cool-down (at most
  `cooldown_max_s`). A probe whose caller went away without an outcome frees the slot for the next caller.

Only failures that are the deployment's (429, 5xx, transport errors, timeouts, broken streams, auth and
not-found) count; a request the provider rejected as such (context length, content filter, other 400s)
says nothing about its health and neither opens nor closes the breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[str, str]  # (provider name, upstream model)


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int = 5
    cooldown_s: float = 5.0
    cooldown_max_s: float = 60.0


@dataclass
class _State:
    failures: int = 0  # consecutive failed calls
    open_until: float = 0.0  # 0: closed
    cooldown_s: float = 0.0  # length of the current/last opening
    probing: bool = False  # half-open and the probe is out


class Permit:
    """Leave to call a deployment once; a probe permit must be resolved by success/failure/release."""

    __slots__ = ("key", "probe")

    def __init__(self, key: Key, probe: bool) -> None:
        self.key = key
        self.probe = probe


class Breakers:
    """The breakers of every deployment this process has called. One event loop owns it (no locking)."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        if policy.threshold < 1 or policy.cooldown_s <= 0 or policy.cooldown_max_s < policy.cooldown_s:
            raise ValueError("need threshold >= 1 and 0 < cooldown_s <= cooldown_max_s")
        self.policy = policy
        self.clock = clock
        self._states: dict[Key, _State] = {}

    def allow(self, key: Key) -> Permit | None:
        """A permit to call `key` now, or None when its breaker is open (or half-open with a probe out)."""
        st = self._states.get(key)
        if st is None or not st.open_until:
            return Permit(key, probe=False)
        if st.probing or self.clock() < st.open_until:
            return None
        st.probing = True
        return Permit(key, probe=True)

    def remaining_s(self, key: Key) -> float:
        """Seconds until `key` may be probed again (0 when closed or probe-able now)."""
        st = self._states.get(key)
        if st is None or not st.open_until:
            return 0.0
        return max(0.0, st.open_until - self.clock())

    def is_open(self, key: Key) -> bool:
        st = self._states.get(key)
        return st is not None and bool(st.open_until)

    def success(self, permit: Permit) -> None:
        self._states.pop(permit.key, None)

    def failure(self, permit: Permit) -> None:
        st = self._states.setdefault(permit.key, _State())
        p = self.policy
        st.failures += 1
        if permit.probe:  # the probe failed: open again, for twice as long
            st.cooldown_s = min(p.cooldown_max_s, max(p.cooldown_s, st.cooldown_s * 2))
        elif st.open_until or st.failures < p.threshold:
            return  # still closed, or already open (a call let through before it opened failed late)
        else:
            st.cooldown_s = p.cooldown_s
        st.probing = False
        st.open_until = self.clock() + st.cooldown_s

    def release(self, permit: Permit) -> None:
        """The call ended without an outcome (its caller went away): a held probe slot is freed."""
        st = self._states.get(permit.key)
        if permit.probe and st is not None:
            st.probing = False
