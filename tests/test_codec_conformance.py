"""Our encoder's high-level syntax equals NNCodec's, byte for byte.

For every conformance vector (tests/vectors/, written by NNCodec 2.1.3) the
encoder, given the vector's inputs and options, must write the same units
with the same header bytes (everything but the size field and the CABAC
segment, whose eco choices and DQ paths may legitimately differ) and signal
the same qp per tensor. Codebook vectors are left out: NNCodec's codebook
mode 1 always keeps the codebook and its zero-offset search differs from
ours by design.
"""

from __future__ import annotations

import pytest
from conftest import (
    VECTORS_DIR,
    codec_options,
    load_manifest,
    load_vector_arrays,
    tensors_with_prefix,
)

import flwr_nncodec as nnc
from flwr_nncodec import hls

VECTORS = load_manifest()["vectors"]
CASES = sorted(
    name
    for name, entry in VECTORS.items()
    if "nncodec_error" not in entry
    and entry["options"].get("approx_method") != "codebook"
)


def header_bytes(stream: bytes) -> list[tuple[str, bytes]]:
    """(unit label, header bytes without the size field) per unit."""
    out = []
    for unit in hls.parse_stream(stream).units:
        size_field = 4 if stream[unit.offset] & 0x80 else 2
        end = unit.payload_offset or unit.offset + unit.size
        out.append((unit.label, stream[unit.offset + size_field : end]))
    return out


def qps(stream: bytes) -> dict[str, int | None]:
    return {u["name"]: u["qp"] for u in nnc.inspect(stream) if u["type"] == "NDU"}


def assert_same_syntax(ours: bytes, reference: bytes, where: str) -> None:
    assert header_bytes(ours) == header_bytes(reference), where
    assert qps(ours) == qps(reference), where


@pytest.mark.parametrize("name", CASES)
def test_encoder_writes_nncodecs_header_bytes(name):
    entry = VECTORS[name]
    arrays = load_vector_arrays(entry)
    options = codec_options(entry)

    if entry["kind"] == "single":
        ours = nnc.encode(tensors_with_prefix(arrays, "in:"), **options)
        reference = (VECTORS_DIR / entry["bitstream"]).read_bytes()
        assert_same_syntax(ours, reference, name)
        return

    base = nnc.BaseState(device_id=int(entry["initial_base"]["device_id"]))
    for index, step in enumerate(entry["steps"]):
        params = tensors_with_prefix(arrays, f"s{index}:in:")
        ours = nnc.encode(params, **options, base=base, update_base=True)
        reference = (VECTORS_DIR / step["bitstream"]).read_bytes()
        assert_same_syntax(ours, reference, f"{name} step {index}")
