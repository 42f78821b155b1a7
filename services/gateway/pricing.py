"""Prices from the model table, in integer nano-dollars (1e-9 USD) so Redis counters never drift.

A reservation must not be below what the call can cost: for a virtual model ("auto") it is priced at the
dearest member for input and for output, and cached prompt tokens are assumed absent. The real cost, known
after the call, uses the answering model's prices for fresh, cached and completion tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from weir.common.v1 import types_pb2
from weir.mesh_config import MeshConfig, Model

NANO = 1_000_000_000


def usd(nano: int) -> float:
    return nano / NANO


def nano(usd_amount: float) -> int:
    return round(usd_amount * NANO)


@dataclass(frozen=True)
class Rate:
    """USD per million tokens, i.e. nano-dollars per token / 1000."""

    input: float
    output: float
    cached: float


class Pricing:
    def __init__(self, mesh: MeshConfig) -> None:
        self._rates: dict[str, Rate] = {
            m.id: Rate(m.input_usd_per_mtok, m.output_usd_per_mtok, m.cached_input_usd_per_mtok)
            for m in mesh.models.values()}
        self._allowing: dict[str, set[str]] = {m: {m} for m in mesh.models}
        for v in mesh.virtual_models.values():
            members = [mesh.models[ref] for ref in (v.strong, v.weak, *v.fallbacks)]
            self._rates[v.id] = Rate(max(m.input_usd_per_mtok for m in members),
                                     max(m.output_usd_per_mtok for m in members),
                                     max(m.cached_input_usd_per_mtok for m in members))
            self._allowing[v.id] = {v.id} | {m.id for m in members}
            for m in members:
                self._allowing[m.id].add(v.id)
        self.deployments: dict[str, Model] = {m.id: m for m in mesh.models.values() if m.rpm > 0 or m.tpm > 0}
        self.virtual: frozenset[str] = frozenset(mesh.virtual_models)

    def known(self, model: str) -> bool:
        return model in self._rates

    def allowing(self, model: str) -> list[str]:
        """Entries of a key's model list that permit `model` (the router's rule: a virtual model allows its
        members, and a member allows asking for the virtual model, which then routes among allowed members)."""
        return sorted(self._allowing.get(model, {model}))

    def estimate(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """Upper bound of a call's cost in nano-dollars; 0 for a model the table does not know."""
        rate = self._rates.get(model)
        if rate is None:
            return 0
        return math.ceil(prompt_tokens * rate.input * 1000 + completion_tokens * rate.output * 1000)

    def cost(self, model: str, usage: types_pb2.Usage) -> int:
        """What a call with this usage cost, in nano-dollars (cached prompt tokens at the cached price)."""
        rate = self._rates.get(model)
        if rate is None:
            return 0
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        fresh = usage.prompt_tokens - cached
        return round((fresh * rate.input + cached * rate.cached + usage.completion_tokens * rate.output) * 1000)
