"""Export the telko SentencePiece model into the package's plain JSON vocabulary.

Usage: python tools/export_telko_vocab.py telko_tokenizer.model out.json

Reads the ModelProto wire format directly (field numbers from
sentencepiece_model.proto) so no protobuf runtime is needed. Only run once, by
a developer; the package never reads the .model file.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

PIECE_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """Decode one base-128 varint at offset; return (value, next offset)."""
    value, shift = 0, 0
    while True:
        if offset >= len(data):
            raise ValueError(f"varint runs past the end at byte {offset}")
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        if byte < 0x80:
            return value, offset
        shift += 7


def iter_fields(data: bytes):
    """Yield (field number, wire type, value) over one protobuf message."""
    offset = 0
    while offset < len(data):
        key, offset = read_varint(data, offset)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, offset = read_varint(data, offset)
        elif wire_type == 1:
            value, offset = data[offset : offset + 8], offset + 8
        elif wire_type == 2:
            length, offset = read_varint(data, offset)
            value, offset = data[offset : offset + length], offset + length
        elif wire_type == 5:
            value, offset = data[offset : offset + 4], offset + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} at byte {offset}")
        yield field, wire_type, value


def export(model_path: Path) -> dict:
    """Pieces, scores, types and normaliser switches of a SentencePiece model."""
    pieces, scores, types = [], [], []
    normalizer: dict[str, object] = {}
    for field, _, value in iter_fields(model_path.read_bytes()):
        if field == 1:  # repeated SentencePiece
            piece, score, piece_type = "", 0.0, 1
            for sub_field, _, sub_value in iter_fields(value):
                if sub_field == 1:
                    piece = sub_value.decode("utf-8")
                elif sub_field == 2:
                    score = struct.unpack("<f", sub_value)[0]
                elif sub_field == 3:
                    piece_type = sub_value
            pieces.append(piece)
            scores.append(score)
            types.append(PIECE_TYPES[piece_type])
        elif field == 3:  # NormalizerSpec
            for sub_field, _, sub_value in iter_fields(value):
                if sub_field == 1:
                    normalizer["name"] = sub_value.decode("utf-8")
                elif sub_field == 3:
                    normalizer["add_dummy_prefix"] = bool(sub_value)
                elif sub_field == 4:
                    normalizer["remove_extra_whitespaces"] = bool(sub_value)
                elif sub_field == 5:
                    normalizer["escape_whitespaces"] = bool(sub_value)
    return {
        "source": "telko_tokenizer.model (nncodec2 example/tokenizer), md5-identical "
        "in NNCodec-FL-MixedTokenTransformer",
        "model_type": "unigram",
        "normalizer": normalizer,
        "pieces": pieces,
        "scores": scores,
        "types": types,
    }


if __name__ == "__main__":
    vocab = export(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    print(f"wrote {len(vocab['pieces'])} pieces to {sys.argv[2]}")
