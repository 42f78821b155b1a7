"""Seeded mutations for fuzzing tests: JSON documents, header sets and protobuf messages with one to a few
things changed (dropped, retyped, set to extremes such as 2**63, NaN, non-ASCII digits, control characters)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor as D
from google.protobuf.message import Message

ODD: list[Any] = [None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63) - 1, 2**64, 1e308, -1e308, 0.5, "", " ", "a",
                  "\x00", "é🙂", "x" * 5000, [], [None], {}, {"a": 1}, [[[]]], "NaN", "1e999", "²", "١٢", "auto"]
ODD_STRINGS = ["", " ", "a", "auto", "fake-small", "x" * 5000, "\x00", "é🙂", "What is 2+2?", "user", "../etc",
               "{}", "[]", '{"a": 1}', "null", "-1", "1-1", "\u0661-\u0661", "²", "%s", "\ud7ff", "a\nb"]
ODD_HEADERS = {
    "Cache-Control": ["no-store", "no-cache", "max-age=-1", "max-age=²", "max-age=99999999999999999999", "max-age=",
                      "s-maxage=5, no-store", "private"],
    "x-weir-stream-race": ["on", "off", "ON", "maybe", "é"],
    "x-weir-cache-allow": ["nondeterministic", "x"],
    "x-weir-preview": ["on", "1"],
    "traceparent": ["00-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "zz"],
    "Last-Event-ID": ["1-1", "١-١", "99999999999999999999999-1", "x"],
}


class Fuzzer:
    """Seeded mutations of JSON documents, header sets and protobuf messages."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    def json(self, value: Any) -> Any:
        """`value` with one thing changed, somewhere inside it."""
        rnd = self.rnd
        if rnd.random() < 0.25 or not isinstance(value, (dict, list)) or not value:
            return rnd.choice(ODD)
        if isinstance(value, dict):
            out = dict(value)
            key = rnd.choice(list(out))
            op = rnd.random()
            if op < 0.25:
                del out[key]
            elif op < 0.4:
                out[rnd.choice(["n", "stop", "seed", "tools", "tool_choice", "response_format", "stream_options",
                                "user", "top_p", "max_completion_tokens", "logit_bias", "extra"])] = rnd.choice(ODD)
            else:
                out[key] = self.json(out[key])
            return out
        items = list(value)
        i = rnd.randrange(len(items))
        op = rnd.random()
        if op < 0.2:
            del items[i]
        elif op < 0.35:
            items.append(items[i])
        else:
            items[i] = self.json(items[i])
        return items

    def headers(self) -> dict[bytes, bytes]:
        """Zero to two odd request headers (as UTF-8 bytes: some values are not ASCII)."""
        names = self.rnd.sample(sorted(ODD_HEADERS), self.rnd.randrange(0, 3))
        return {n.encode(): self.rnd.choice(ODD_HEADERS[n]).encode() for n in names}

    def value(self, f: D.FieldDescriptor) -> Any:
        rnd, t = self.rnd, f.type
        if t == D.FieldDescriptor.TYPE_MESSAGE:
            return None  # sub-messages keep their valid content; their own fields get changed instead
        if t == D.FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            return rnd.choice([v.number for v in f.enum_type.values] + [99, -1])
        if t == D.FieldDescriptor.TYPE_STRING:
            return rnd.choice(ODD_STRINGS)
        if t == D.FieldDescriptor.TYPE_BYTES:
            return rnd.choice([b"", b"\x00" * 10, b"junk", rnd.randbytes(64)])
        if t == D.FieldDescriptor.TYPE_BOOL:
            return rnd.random() < 0.5
        if t in (D.FieldDescriptor.TYPE_FLOAT, D.FieldDescriptor.TYPE_DOUBLE):
            return rnd.choice([0.0, -1.0, 1.0, 0.5, 1e30, -1e30, float("nan"), float("inf"), 1e-40])
        if t in (D.FieldDescriptor.TYPE_UINT32, D.FieldDescriptor.TYPE_FIXED32):
            return rnd.choice([0, 1, 2**32 - 1])
        if t in (D.FieldDescriptor.TYPE_UINT64, D.FieldDescriptor.TYPE_FIXED64):
            return rnd.choice([0, 1, 2**64 - 1])
        if t in (D.FieldDescriptor.TYPE_INT64, D.FieldDescriptor.TYPE_SINT64, D.FieldDescriptor.TYPE_SFIXED64):
            return rnd.choice([0, 1, -1, 2**63 - 1, -(2**63)])
        return rnd.choice([0, 1, -1, 5, 1000, 2**31 - 1, -(2**31)])

    def proto(self, msg: Message) -> Message:
        """A copy of `msg` with one to three scalar fields, at any depth, set to odd values or cleared."""
        out = type(msg)()
        out.CopyFrom(msg)
        for _ in range(self.rnd.randrange(1, 4)):
            owner, f = self.rnd.choice(list(_fields(out)))
            if f.type == D.FieldDescriptor.TYPE_MESSAGE:
                owner.ClearField(f.name)
            elif f.is_repeated:
                owner.ClearField(f.name)
                getattr(owner, f.name).extend(self.value(f) for _ in range(self.rnd.choice([0, 1, 3, 40])))
            else:
                setattr(owner, f.name, self.value(f))
        return out


def _fields(msg: Message) -> Iterator[tuple[Message, Any]]:
    """(message, field) for every field of `msg` and of the sub-messages it holds (map fields left out)."""
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            continue
        yield msg, f
        if f.type == D.FieldDescriptor.TYPE_MESSAGE:
            subs = getattr(msg, f.name) if f.is_repeated else ([getattr(msg, f.name)] if msg.HasField(f.name) else [])
            for sub in subs:
                yield from _fields(sub)
