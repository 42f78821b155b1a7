"""What one hop costs: gRPC unary calls against messages on an open stream, and the HTTP servers and clients.

    .venv/bin/python -m bench.transport_bench [--calls 4000] [--rounds 2] [--only grpc|http-server|http-client]

Every server runs in a process of its own; CPU is read from /proc (utime + stime of the process tree) before
and after a timed run, so the figures are CPU-ms per call on each side, the measure of issue #9.

- **gRPC**: a grpc.aio server with the mesh's options (`weir.kit.server.GRPC_OPTIONS`) echoing a 1,600-byte
  message (the size of a request that carries a 384-d embedding), called by a grpc.aio client, one call at a
  time (c=1) and 16 at once (c=16): a unary call per message, as every hop of the mesh made before weir.kit.mux,
  against messages written and read on a bidirectional stream opened once per client task (ping-pong), the
  transport a multiplexed hop uses. No interceptors, no proto: the transport's floor. Third, `weir mux call`: the
  mesh's own multiplexed unary call (`weir.kit.mux`: envelope, ids, deadline timer, batched writes) to the same
  echo, one shared stream for all client tasks.
- **HTTP server**: one chat-completions-shaped POST (orjson in and out) on aiohttp's server (the REST bridge's),
  and, when installed, uvicorn with httptools and granian (RSGI and ASGI). Driven by an aiohttp client.
- **HTTP client**: aiohttp's client (the reasoner's) and, when installed, httpx, against an aiohttp server.

The other candidates are not dependencies of Weir: `pip install uvicorn httptools granian httpx` to compare
them; a candidate that is not installed is left out of the table and named in a note.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import orjson

from bench.measure import cpu_seconds
from weir.kit.mux import MuxChannel, MuxServicer
from weir.kit.server import GRPC_OPTIONS
from weir.mux.v1 import mux_service_pb2_grpc

GRPC_PAYLOAD = os.urandom(1600)
CHAT_BODY = orjson.dumps({"model": "m", "temperature": 0,
                          "messages": [{"role": "user", "content": "What is the capital of France?"}]})
CHAT_ANSWER = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 300}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
})
#: (candidate, concurrency, client CPU-ms per call, server CPU-ms per call, calls per second)
Row = tuple[str, int, float, float, float]
HTTP_SERVERS = ("aiohttp", "uvicorn", "granian-rsgi", "granian-asgi")
HTTP_CLIENTS = ("aiohttp", "httpx")


def _ident(b: bytes) -> bytes:
    return b


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _server_available(kind: str) -> bool:
    return {"aiohttp": True, "uvicorn": _installed("uvicorn", "httptools"),
            "granian-rsgi": _installed("granian"), "granian-asgi": _installed("granian")}[kind]


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answer(body: bytes) -> bytes:
    if not orjson.loads(body)["messages"]:
        raise ValueError("no messages")
    return CHAT_ANSWER


# --- servers (each runs in a process of its own: `python -m bench.transport_bench --serve KIND PORT`) ---

async def _grpc_server(port: int) -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def stream(requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message

    server = grpc.aio.server(options=GRPC_OPTIONS)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, _ident, _ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    multiplexed = MuxServicer()  # the mesh's multiplexed unary calls, to the same echo
    multiplexed.add("bench.Echo", handlers)
    mux_service_pb2_grpc.add_MuxServiceServicer_to_server(multiplexed, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _asgi(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = _answer(body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


class _Rsgi:
    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        body = await protocol()
        protocol.response_bytes(200, [("content-type", "application/json")], _answer(body))


rsgi_app = _Rsgi()
asgi_app = _asgi


def _serve(kind: str, port: int) -> None:
    import uvloop

    if kind == "grpc":
        uvloop.install()
        asyncio.run(_grpc_server(port))
    elif kind == "aiohttp":
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            return web.Response(body=_answer(await request.read()), content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        uvloop.install()
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    elif kind == "uvicorn":
        uvicorn: Any = importlib.import_module("uvicorn")
        uvicorn.run("bench.transport_bench:asgi_app", host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                    log_level="warning", access_log=False, lifespan="off")
    elif kind.startswith("granian-"):
        granian: Any = importlib.import_module("granian")
        constants: Any = importlib.import_module("granian.constants")
        rsgi = kind == "granian-rsgi"
        granian.Granian("bench.transport_bench:" + ("rsgi_app" if rsgi else "asgi_app"), address="127.0.0.1",
                        port=port, interface=constants.Interfaces.RSGI if rsgi else constants.Interfaces.ASGI,
                        workers=1, runtime_threads=1, loop=constants.Loops.uvloop, log_enabled=False).serve()
    else:
        raise SystemExit(f"unknown server {kind}")


class _Server:
    """A server of one kind in its own process group, on a free port."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.transport_bench", "--serve", kind,
                                      str(self.port)], start_new_session=True)

    async def __aenter__(self) -> _Server:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                await asyncio.sleep(0.3)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}") from None
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.kind} server did not listen within 30 s")

    async def __aexit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


async def _timed(server: _Server, calls: int, concurrency: int,
                 one: Callable[[], Awaitable[None]]) -> tuple[float, float, float]:
    """(client CPU-ms, server CPU-ms, calls/s) per call for `calls` calls, `concurrency` at a time."""
    for _ in range(300):
        await one()
    c0, s0, t0 = _own_cpu(), server.cpu(), time.perf_counter()

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    done = calls // concurrency * concurrency
    return 1000 * (_own_cpu() - c0) / done, 1000 * (server.cpu() - s0) / done, done / wall


async def grpc_rows(calls: int) -> list[Row]:
    rows = []
    async with _Server("grpc") as server:
        for mode in ("unary call", "stream message", "weir mux call"):
            for conc in (1, 16):
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=GRPC_OPTIONS)
                unary = channel.unary_unary("/bench.Echo/Unary", _ident, _ident)
                open_stream = channel.stream_stream("/bench.Echo/Stream", _ident, _ident)
                streams: dict[int, Any] = {}
                mux = MuxChannel(f"127.0.0.1:{server.port}")

                async def one_unary(unary: Any = unary) -> None:
                    await unary(GRPC_PAYLOAD)

                async def one_stream(streams: dict[int, Any] = streams, open_stream: Any = open_stream) -> None:
                    # one stream per worker task, opened on its first message and kept
                    task = id(asyncio.current_task())
                    call = streams.get(task)
                    if call is None:
                        call = streams[task] = open_stream()
                    await call.write(GRPC_PAYLOAD)
                    await call.read()

                async def one_mux(mux: MuxChannel = mux) -> None:
                    await mux.call("/bench.Echo/Unary", GRPC_PAYLOAD)

                modes: dict[str, Callable[[], Awaitable[None]]] = {
                    "unary call": one_unary, "stream message": one_stream, "weir mux call": one_mux}
                one = modes[mode]
                client, srv, rate = await _timed(server, calls, conc, one)
                for call in streams.values():
                    call.cancel()
                await mux.close()
                await channel.close()
                rows.append((mode, conc, client, srv, rate))
    return rows


async def http_server_rows(calls: int, notes: list[str]) -> list[Row]:
    rows = []
    for kind in HTTP_SERVERS:
        if not _server_available(kind):
            notes.append(f"{kind}: not installed, left out")
            continue
        async with _Server(kind) as server:
            url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
            for conc in (1, 16):
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
                    async def one(session: aiohttp.ClientSession = session, url: str = url, kind: str = kind) -> None:
                        async with session.post(url, data=CHAT_BODY,
                                                headers={"content-type": "application/json"}) as r:
                            if r.status != 200:
                                raise RuntimeError(f"{kind}: HTTP {r.status}")
                            await r.read()

                    client, srv, rate = await _timed(server, calls, conc, one)
                rows.append((kind, conc, client, srv, rate))
    return rows


async def http_client_rows(calls: int, notes: list[str]) -> list[Row]:
    rows = []
    async with _Server("aiohttp") as server:
        url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
        headers = {"content-type": "application/json"}
        for kind in HTTP_CLIENTS:
            if kind == "httpx" and not _installed("httpx"):
                notes.append("httpx: not installed, left out")
                continue
            for conc in (1, 16):
                if kind == "aiohttp":
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

                    async def one(session: aiohttp.ClientSession = session) -> None:
                        async with session.post(url, data=CHAT_BODY, headers=headers) as r:
                            orjson.loads(await r.read())

                    client, srv, rate = await _timed(server, calls, conc, one)
                    await session.close()
                else:
                    httpx: Any = importlib.import_module("httpx")
                    hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

                    async def one_httpx(hx: Any = hx) -> None:
                        r = await hx.post(url, content=CHAT_BODY, headers=headers)
                        orjson.loads(r.content)

                    client, srv, rate = await _timed(server, calls, conc, one_httpx)
                    await hx.aclose()
                rows.append((kind, conc, client, srv, rate))
    return rows


def _print(title: str, rows: list[tuple[int, Row]]) -> None:
    print(f"\n{title}")
    print(f"{'round':>5}  {'candidate':<16} {'conc':>4}  {'client CPU-ms':>13}  {'server CPU-ms':>13}  "
          f"{'both':>6}  {'calls/s':>8}")
    for rnd, (name, conc, client, srv, rate) in rows:
        print(f"{rnd:>5}  {name:<16} {conc:>4}  {client:>13.3f}  {srv:>13.3f}  {client + srv:>6.3f}  {rate:>8.0f}")


async def run(calls: int, rounds: int, only: str | None) -> None:
    notes: list[str] = []
    tables: dict[str, list[tuple[int, Row]]] = {
        "gRPC: a unary call per message, messages on one open stream, or weir.kit.mux calls": [],
        "HTTP servers (chat-completions-shaped POST, aiohttp client)": [],
        "HTTP clients (against aiohttp's server)": []}
    titles = list(tables)
    for rnd in range(1, rounds + 1):
        if only in (None, "grpc"):
            tables[titles[0]] += [(rnd, row) for row in await grpc_rows(calls)]
        if only in (None, "http-server"):
            tables[titles[1]] += [(rnd, row) for row in await http_server_rows(calls, notes)]
        if only in (None, "http-client"):
            tables[titles[2]] += [(rnd, row) for row in await http_client_rows(calls, notes)]
    for title, rows in tables.items():
        if rows:
            _print(title, rows)
    for note in dict.fromkeys(notes):
        print(f"note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000, help="timed calls per row")
    parser.add_argument("--rounds", type=int, default=2, help="repeat every row this many times")
    parser.add_argument("--only", choices=("grpc", "http-server", "http-client"))
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]))
        return
    import uvloop

    uvloop.install()
    asyncio.run(run(args.calls, args.rounds, args.only))


if __name__ == "__main__":
    main()
