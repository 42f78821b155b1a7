"""An incremental Server-Sent Events parser: bytes in, (event, data) pairs out, robust to any chunking."""

from __future__ import annotations


class SSEParser:
    """Splits a byte stream into events at blank lines; joins `data:` lines; skips comments and unknown fields.

    Line ends may be LF, CRLF or CR, and a chunk may end anywhere (even between CR and LF).
    """

    def __init__(self) -> None:
        self._buf = b""

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
        return events

    def leftover(self) -> bytes:
        """Bytes of an event that never ended (non-empty after a cut stream)."""
        return self._buf.strip()
