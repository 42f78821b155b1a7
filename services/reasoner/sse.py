"""An incremental Server-Sent Events parser: bytes in, (event, data) pairs out, robust to any chunking."""

from __future__ import annotations

#: The largest event accepted (an event is one delta: a few bytes to a few KiB in practice).
MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(ValueError):
    """An event grew past MAX_EVENT_BYTES without ending: the stream is broken (or hostile)."""


class SSEParser:
    """Splits a byte stream into events at blank lines; joins `data:` lines; skips comments and unknown fields.

    Line ends may be LF, CRLF or CR, and a chunk may end anywhere (even between CR and LF). An event that
    grows past `max_event_bytes` raises EventTooLarge, so a stream that never ends an event cannot take the
    memory (and the re-scanning CPU) of the process.
    """

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._buf = b""
        self._max = MAX_EVENT_BYTES if max_event_bytes is None else max_event_bytes

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf + chunk
        if b"\r" in buf:
            held = b"\r" if buf.endswith(b"\r") else b""  # a CR at the end may be half of a CRLF
            body = buf[:-1] if held else buf
            buf = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held
        events: list[tuple[str, bytes]] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            event = ""
            data: list[bytes] = []
            for line in buf[start:end].split(b"\n"):
                if not line or line[0] == 58:  # ":" starts a comment
                    continue
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    event = value.decode(errors="replace")
            if data or event:
                events.append((event, b"\n".join(data)))
            start = end + 2
        self._buf = buf[start:]
        if len(self._buf) > self._max:
            raise EventTooLarge(f"an event grew past {self._max} bytes without ending")
        return events

    def leftover(self) -> bytes:
        """Bytes of an event that never ended (non-empty after a cut stream)."""
        return self._buf.strip()
