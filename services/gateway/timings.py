"""Milliseconds per hop of one request, for the Server-Timing header, the gRPC answer and the metrics."""

from __future__ import annotations

import time

from weir.gateway.v1 import gateway_service_pb2 as gateway_pb


class Timings:
    """Milliseconds per hop, rendered as a W3C Server-Timing header."""

    __slots__ = ("hops", "start")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.hops: dict[str, float] = {}

    def add(self, hop: str, since: float) -> None:
        self.hops[hop] = self.hops.get(hop, 0.0) + (time.perf_counter() - since) * 1000

    def total(self) -> float:
        return (time.perf_counter() - self.start) * 1000

    def header(self) -> str:
        parts = [f"{hop};dur={ms:.2f}" for hop, ms in self.hops.items()]
        parts.append(f"total;dur={self.total():.2f}")
        return ", ".join(parts)

    def proto(self) -> list[gateway_pb.HopTiming]:
        out = [gateway_pb.HopTiming(hop=h, ms=ms) for h, ms in self.hops.items()]
        out.append(gateway_pb.HopTiming(hop="total", ms=self.total()))
        return out
