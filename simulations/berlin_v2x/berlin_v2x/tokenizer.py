"""Telko tokenizer: the published SentencePiece unigram model, re-implemented.

The vocabulary (237 pieces: <unk>, <s>, </s>, 233 user-defined symbols and
the learned piece "▁") ships as ``telko_vocab.json``, exported once from
``telko_tokenizer.model``. Encoding reproduces SentencePiece's unigram
Viterbi search, including its float arithmetic, so ties between equally
long segmentations resolve the same way; the tests compare ids with
SentencePiece itself.
"""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from importlib import resources

import numpy as np

UNK_ID = 0
TIME_ID = 17
ARROW_ID = 14
SPACE_PIECE = "\u2581"
VOCAB_SIZE = 237

# SentencePiece gives unknown characters the lowest normal score minus this.
_UNK_PENALTY = 10.0
# User-defined symbols get length * max_score minus this bonus offset.
_USER_DEFINED_OFFSET = 0.1


class TelkoTokenizer:
    """Encode text to telko token ids and decode ids back to text."""

    def __init__(self, vocab: dict) -> None:
        self.pieces: list[str] = list(vocab["pieces"])
        types: list[str] = list(vocab["types"])
        scores = np.asarray(vocab["scores"], dtype=np.float32)
        if len(self.pieces) != VOCAB_SIZE:
            raise ValueError(
                f"telko vocabulary must have {VOCAB_SIZE} pieces, got {len(self.pieces)}"
            )

        normal = [i for i, kind in enumerate(types) if kind == "normal"]
        self._max_score = np.float32(scores[normal].max())
        self._unk_score = float(np.float32(scores[normal].min())) - _UNK_PENALTY

        # Byte trie over every piece a segmentation may use.
        self._trie: dict = {}
        self._score_of: dict[int, float] = {}
        for piece_id, (piece, kind) in enumerate(zip(self.pieces, types)):
            if kind not in ("normal", "user_defined"):
                continue
            piece_bytes = piece.encode("utf-8")
            node = self._trie
            for byte in piece_bytes:
                node = node.setdefault(byte, {})
            node[-1] = piece_id
            if kind == "user_defined":
                length_score = np.float32(
                    np.float32(len(piece_bytes)) * self._max_score
                )
                self._score_of[piece_id] = float(length_score) - _USER_DEFINED_OFFSET
            else:
                self._score_of[piece_id] = float(scores[piece_id])

        spec = vocab.get("normalizer", {})
        self._add_dummy_prefix = bool(spec.get("add_dummy_prefix", True))
        self._remove_extra_whitespaces = bool(
            spec.get("remove_extra_whitespaces", True)
        )

    @property
    def vocab_size(self) -> int:
        """Number of pieces (237)."""
        return len(self.pieces)

    def normalize(self, text: str) -> str:
        """NFKC, whitespace squeezing, dummy prefix, spaces escaped as "▁"."""
        text = unicodedata.normalize("NFKC", text)
        text = "".join(" " if ch.isspace() else ch for ch in text)
        if self._remove_extra_whitespaces:
            text = " ".join(part for part in text.split(" ") if part)
        if not text:
            return ""
        if self._add_dummy_prefix:
            text = " " + text
        return text.replace(" ", SPACE_PIECE)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no BOS/EOS), identical to SentencePiece's."""
        data = self.normalize(text).encode("utf-8")
        if not data:
            return []

        # best[pos] = (score, start, id) of the best path ending at byte pos.
        # Scores are stored as float32 and compared in double, as upstream does.
        size = len(data)
        best_score = np.zeros(size + 1, dtype=np.float32)
        best_start = np.full(size + 1, -1, dtype=np.int64)
        best_id = np.full(size + 1, -1, dtype=np.int64)
        start = 0
        while start < size:
            score_here = float(best_score[start])
            char_len = min(_utf8_length(data[start]), size - start)
            has_single_char = False
            node = self._trie
            pos = start
            while pos < size and data[pos] in node:
                node = node[data[pos]]
                pos += 1
                piece_id = node.get(-1)
                if piece_id is None:
                    continue
                candidate = self._score_of[piece_id] + score_here
                if best_start[pos] == -1 or candidate > float(best_score[pos]):
                    best_score[pos], best_start[pos], best_id[pos] = (
                        candidate,
                        start,
                        piece_id,
                    )
                if pos - start == char_len:
                    has_single_char = True
            if not has_single_char:
                end = start + char_len
                candidate = self._unk_score + score_here
                if best_start[end] == -1 or candidate > float(best_score[end]):
                    best_score[end], best_start[end], best_id[end] = (
                        candidate,
                        start,
                        UNK_ID,
                    )
            start += char_len

        ids: list[int] = []
        pos = size
        while pos > 0:
            ids.append(int(best_id[pos]))
            pos = int(best_start[pos])
        ids.reverse()
        return _merge_unknown_runs(ids)

    def decode(self, ids) -> str:
        """Text of a token id sequence; control ids vanish, <unk> reads " ⁇ "."""
        parts = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < len(self.pieces):
                raise ValueError(
                    f"token id {token_id} outside the vocabulary of {len(self.pieces)}"
                )
            if token_id in (1, 2):
                continue
            parts.append(" \u2047 " if token_id == UNK_ID else self.pieces[token_id])
        return "".join(parts).replace(SPACE_PIECE, " ").lstrip(" ")


def _utf8_length(lead_byte: int) -> int:
    """Byte length of the UTF-8 character starting with lead_byte (1 if invalid)."""
    if lead_byte < 0x80:
        return 1
    if lead_byte >> 5 == 0b110:
        return 2
    if lead_byte >> 4 == 0b1110:
        return 3
    if lead_byte >> 3 == 0b11110:
        return 4
    return 1


def _merge_unknown_runs(ids: list[int]) -> list[int]:
    """Collapse each run of consecutive <unk> ids into one, like SentencePiece."""
    merged: list[int] = []
    for token_id in ids:
        if token_id == UNK_ID and merged and merged[-1] == UNK_ID:
            continue
        merged.append(token_id)
    return merged


@lru_cache(maxsize=1)
def load_tokenizer() -> TelkoTokenizer:
    """The packaged telko tokenizer (vocabulary read from telko_vocab.json)."""
    text = resources.files(__package__).joinpath("telko_vocab.json").read_text("utf-8")
    return TelkoTokenizer(json.loads(text))
