"""Client channels to other Weir services: pooled, traced when tracing is on, with deadlines."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from weir.kit import telemetry
from weir.kit.config import env
from weir.kit.server import GRPC_OPTIONS


@dataclass(frozen=True)
class Deadlines:
    """Per-hop deadlines in seconds (the reasoner's is long: it waits on a model)."""

    embed_s: float = env("WEIR_DEADLINE_EMBED_S", 2.0)
    cache_s: float = env("WEIR_DEADLINE_CACHE_S", 2.0)
    #: A store runs after the answer, in the background: it may wait for a slow write (the first answer of an
    #: embedding model creates its Milvus collection, which takes seconds on a Milvus server).
    store_s: float = env("WEIR_DEADLINE_STORE_S", 30.0)
    route_s: float = env("WEIR_DEADLINE_ROUTE_S", 1.0)
    reason_s: float = env("WEIR_DEADLINE_REASON_S", 300.0)


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure aio channel to `target` (host:port) with the mesh's options and interceptors."""
    interceptors = telemetry.client_interceptors()
    return grpc.aio.insecure_channel(target, options=GRPC_OPTIONS, interceptors=interceptors or None)
