"""Client channels to other Weir services: pooled, traced when tracing is on, with deadlines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from weir.kit import telemetry
from weir.kit.config import env
from weir.kit.mux import MuxChannel, mux_stub
from weir.kit.server import GRPC_OPTIONS

S = TypeVar("S")


@dataclass(frozen=True)
class ClientSettings:
    """How this process calls the other services."""

    mux: bool = env("WEIR_MUX", True,
                    help="send unary calls to another service as messages on one open stream (weir.kit.mux: "
                         "≈ 0.35 against 0.5 CPU-ms a call alone, 0.04 against 0.25 when calls share messages under "
                         "load); off: a gRPC call each")


@dataclass(frozen=True)
class Deadlines:
    """Per-hop deadlines in seconds (the reasoner's is long: it waits on a model)."""

    embed_s: float = env("WEIR_DEADLINE_EMBED_S", 2.0, help="the embedding hop")
    cache_s: float = env("WEIR_DEADLINE_CACHE_S", 2.0, help="a cache lookup")
    #: A store runs after the answer, in the background: it may wait for a slow write (the first answer of an
    #: embedding model creates its Milvus collection, which takes seconds on a Milvus server).
    store_s: float = env("WEIR_DEADLINE_STORE_S", 30.0,
                          help="a cache store (after the answer, in the background)")
    route_s: float = env("WEIR_DEADLINE_ROUTE_S", 1.0, help="the routing decision")
    reason_s: float = env("WEIR_DEADLINE_REASON_S", 300.0, help="the model call, retries and fallbacks included")


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure aio channel to `target` (host:port) with the mesh's options and interceptors."""
    interceptors = telemetry.client_interceptors()
    return grpc.aio.insecure_channel(target, options=GRPC_OPTIONS, interceptors=interceptors or None)


class ServiceClient:
    """The connection to one service: a channel for its streaming calls (and health checks) and, with `mux`, a
    multiplexed stream that carries its unary calls."""

    def __init__(self, target: str, mux: bool) -> None:
        self.channel = open_channel(target)
        self.mux = MuxChannel(target) if mux else None

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S], service: ServiceDescriptor) -> S:
        """A stub of `service` (its generated `XxxServiceStub` class): unary methods on the mux stream."""
        stub = stub_class(self.channel)
        return stub if self.mux is None else mux_stub(stub, service, self.mux)

    async def close(self) -> None:
        if self.mux is not None:
            await self.mux.close()
        await self.channel.close()
