"""Text -> model inputs, exactly as the embedder feeds its ONNX model (the exporter verifies with this too).

The tokenizer.json of sentence-transformers models pins fixed padding (128) and its own truncation;
both are replaced here: a batch is padded only to its longest member, and texts are cut at the
manifest's `max_seq_length` with the cut reported per text.

Imports only numpy, `tokenizers` and weir.kit.text, so the export venv can use it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from weir.kit.text import cut_at_space

IntArray = npt.NDArray[np.int64]

#: A text is tokenized from a prefix of this many characters per token of the model's window (2,048 for a
#: 256-token window) when that prefix already fills the window: the tokenizer reads (normalises, splits) a
#: whole text before truncating it, ≈ 0.6 s for 500 KB, and the model would see only its start.
CHARS_PER_TOKEN = 8


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs for a batch of texts, right-padded to the longest member."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray
    #: Per text: tokens the model sees (special tokens included, after truncation).
    token_counts: list[int]
    #: Per text: whether it was longer than max_length and was cut.
    truncated: list[bool]

    def inputs(self, names: Sequence[str]) -> dict[str, IntArray]:
        """The arrays a model with these input names takes."""
        arrays = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }
        unknown = [n for n in names if n not in arrays]
        if unknown:
            raise ValueError(f"model wants inputs {unknown}; only {sorted(arrays)} are produced")
        return {n: arrays[n] for n in names}


class TextEncoder:
    """A `tokenizers` tokenizer set up for dynamic padding and reported truncation at `max_length`."""

    def __init__(self, tokenizer_file: Path, max_length: int) -> None:
        tok = Tokenizer.from_file(str(tokenizer_file))
        padding = tok.padding
        self.pad_id = int(padding["pad_id"]) if padding else 0
        self.pad_type_id = int(padding["pad_type_id"]) if padding else 0
        tok.no_padding()
        tok.enable_truncation(max_length)
        self.max_length = max_length
        self._tok = tok

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Token encodings, truncated at max_length (an encoding with `overflowing` pieces was cut)."""
        if not texts:
            raise ValueError("no texts to encode")
        if len(texts) == 1 and len(texts[0]) <= self._prefix_chars:
            return [self._tok.encode(texts[0])]
        return self._bounded(list(texts), [self._prefix(t) for t in texts])

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Encoding]:
        """Encodings of text pairs ([CLS] a [SEP] b [SEP], type ids 0 then 1), the longer side cut first."""
        if not pairs:
            raise ValueError("no pairs to encode")
        return self._bounded([(a, b) for a, b in pairs], [(self._prefix(a), self._prefix(b)) for a, b in pairs])

    @property
    def _prefix_chars(self) -> int:
        return self.max_length * CHARS_PER_TOKEN

    def _prefix(self, text: str) -> str:
        return cut_at_space(text, self._prefix_chars)

    def _bounded(self, whole: list[Any], prefixes: list[Any]) -> list[Encoding]:
        """Encodings of `whole`, computed from `prefixes`: a prefix that fills the window (its encoding was cut)
        gives the same tokens as the whole text; one that does not (a text of few, very long tokens) is
        encoded again whole, so the result is always exactly the whole texts' encoding."""
        out = list(self._tok.encode_batch(prefixes))
        for i, (enc, text, prefix) in enumerate(zip(out, whole, prefixes, strict=True)):
            if prefix != text and not enc.overflowing:
                out[i] = self._tok.encode(*text) if isinstance(text, tuple) else self._tok.encode(text)
        return out

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> EncodedBatch:
        """tokenize_pairs + pack: one padded batch of cross-encoder inputs."""
        return self.pack(self.tokenize_pairs(pairs))

    def pack(self, encodings: Sequence[Encoding]) -> EncodedBatch:
        """Right-pads encodings to the longest one and stacks them into int64 model inputs."""
        width = max(len(e.ids) for e in encodings)
        n = len(encodings)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.full((n, width), self.pad_type_id, dtype=np.int64)
        counts: list[int] = []
        truncated: list[bool] = []
        for row, enc in enumerate(encodings):
            k = len(enc.ids)
            ids[row, :k] = enc.ids
            mask[row, :k] = enc.attention_mask
            types[row, :k] = enc.type_ids
            counts.append(k)
            truncated.append(bool(enc.overflowing))
        return EncodedBatch(ids, mask, types, counts, truncated)

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        """tokenize + pack: one padded batch of model inputs."""
        return self.pack(self.tokenize(texts))
