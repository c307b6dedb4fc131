"""Hostile bitstreams: every failure is an NNCFormatError naming unit and offset.

Nothing here may crash the interpreter, hang, or allocate more than the
stream can describe.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import flwr_nncodec as nnc
from flwr_nncodec import hls

HEAD = bytes.fromhex("00040201000806810040008000060e000000")
NDU_W = bytes.fromhex("001d16097700d041c120a0c2a080dff7a00ea44606501f6042ba91dcb0")
NDU_B = bytes.fromhex("001f16096200d0c1c3830a80b4d80007380003931e00000019984800018ffe")
STREAM = HEAD + NDU_W + NDU_B  # nnc-format §1.10, 78 bytes
COMPLETE_LENGTHS = {12, 18, 47, 78}  # after MPS (TPL is optional), TPL, NDUs


def differential_stream() -> tuple[bytes, nnc.BaseState]:
    """A two-round TCA link; returns round 2's stream and the base it needs."""
    rng = np.random.default_rng(21)
    sender = nnc.BaseState(device_id=1)
    receiver = nnc.BaseState(device_id=1)
    options = dict(compress_differences=True, tca=True, device_id=1, qp=-30)
    for _ in range(2):
        update = {
            "a": (rng.normal(size=(5, 7)) * 0.05).astype(np.float32),
            "b": rng.integers(-3, 4, size=6),
        }
        stream = nnc.encode(update, base=sender, update_base=True, **options)
        base_for_stream = receiver.copy()
        nnc.decode(stream, base=receiver, update_base=True)
    return stream, base_for_stream


def assert_located(error: nnc.NNCFormatError, length: int) -> None:
    """The error names a unit (when one was being read) and a byte offset."""
    assert isinstance(error.offset, int) and 0 <= error.offset <= length
    assert f"byte offset {error.offset}" in str(error)
    if error.unit is not None:
        assert str(error).startswith(error.unit)


def decode_or_error(data: bytes, **kwargs):
    try:
        return nnc.decode(data, **kwargs), None
    except nnc.NNCFormatError as error:
        assert_located(error, len(data))
        return None, error


def test_truncation_at_every_byte_offset():
    for length in range(len(STREAM)):
        decoded, error = decode_or_error(STREAM[:length])
        if length in COMPLETE_LENGTHS:  # a shorter but complete stream
            assert decoded is not None and len(decoded) == (length == 47)
        else:
            assert error is not None, f"prefix of {length} bytes was accepted"


def test_truncation_of_a_tca_stream_at_every_byte_offset():
    stream, base = differential_stream()
    complete = {u["offset"] + u["size"] for u in nnc.inspect(stream)} - {4}
    for length in range(len(stream)):
        decoded, error = decode_or_error(stream[:length], base=base)
        assert (error is None) == (length in complete), length
    assert set(nnc.decode(stream, base=base)) == {"a", "b"}


def test_every_single_bit_flip_is_decoded_or_refused_cleanly():
    refused = 0
    for bit in range(8 * len(STREAM)):
        corrupted = bytearray(STREAM)
        corrupted[bit // 8] ^= 0x80 >> (bit % 8)
        decoded, error = decode_or_error(bytes(corrupted))
        refused += error is not None
        if decoded is not None:
            assert all(isinstance(v, np.ndarray) for v in decoded.values())
    assert refused > 8 * len(HEAD)  # every header flip of STR/MPS/TPL is caught


def test_random_garbage_never_escapes_as_another_error():
    rng = np.random.default_rng(5)
    for _ in range(300):
        garbage = rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8)
        decode_or_error(garbage.tobytes())
        spliced = bytearray(STREAM)
        start = int(rng.integers(0, len(STREAM)))
        spliced[start : start + 4] = rng.integers(
            0, 256, size=4, dtype=np.uint8
        ).tobytes()
        decode_or_error(bytes(spliced))


def resize_unit(unit: bytes, delta: int) -> bytes:
    size = int.from_bytes(unit[:2], "big") + delta
    return size.to_bytes(2, "big") + unit[2:]


@pytest.mark.parametrize("delta", [-1, 1, 2, -20])
def test_wrong_ndu_sizes_are_refused(delta):
    data = HEAD + resize_unit(NDU_W, delta) + NDU_B
    with pytest.raises(nnc.NNCFormatError) as info:
        nnc.decode(data)
    assert_located(info.value, len(data))


def test_oversized_unit_is_refused_before_reading_it():
    data = HEAD + bytes.fromhex("ffffffff") + NDU_W[4:]
    with pytest.raises(nnc.NNCFormatError, match="runs past the end") as info:
        nnc.decode(data)
    assert info.value.offset == 18


def test_segment_shorter_than_its_unit_is_refused():
    padded = resize_unit(NDU_W, 1) + b"\x00"
    with pytest.raises(
        nnc.NNCFormatError, match="segment ends after 15 bytes but the unit holds 16"
    ) as info:
        nnc.decode(HEAD + padded)
    assert info.value.unit == "NDU #3 'w'"


def test_missing_terminate_bin_is_refused():
    header_size = 14
    zeroed = NDU_W[:header_size] + bytes(len(NDU_W) - header_size)
    with pytest.raises(nnc.NNCFormatError, match="NDU #3 'w'.*CABAC segment"):
        nnc.decode(HEAD + zeroed)


@pytest.mark.parametrize(
    ("unit_type", "pattern"),
    [
        (9, "unknown nnr_unit_type 9"),
        (63, "unknown nnr_unit_type 63"),
        (2, "LPS units are not supported"),
        (4, "QNT units are not supported"),
        (6, "AGG units are not supported"),
    ],
)
def test_unknown_and_unsupported_unit_types(unit_type, pattern):
    unit = bytearray(NDU_B)
    unit[2] = (unit_type << 2) | (unit[2] & 0x03)
    data = HEAD + NDU_W + bytes(unit)
    with pytest.raises(nnc.NNCFormatError, match=pattern) as info:
        nnc.decode(data)
    assert info.value.offset == 47


@pytest.mark.parametrize(
    "tail", [b"\x00", b"\x00\x04", b"\x00\x04\x02\x01", b"\xff" * 9]
)
def test_garbage_after_the_last_unit_is_refused(tail):
    with pytest.raises(nnc.NNCFormatError) as info:
        nnc.decode(STREAM + tail)
    assert info.value.offset == len(STREAM)


def test_unit_order_is_enforced():
    with pytest.raises(nnc.NNCFormatError, match="first unit is MPS, expected STR"):
        nnc.decode(HEAD[4:12] + HEAD[:4] + HEAD[12:] + NDU_W)
    with pytest.raises(nnc.NNCFormatError, match="STR must be the first unit") as info:
        nnc.decode(HEAD + HEAD[:4])
    assert info.value.offset == 18
    with pytest.raises(nnc.NNCFormatError, match="NDU before the MPS"):
        nnc.decode(HEAD[:4] + NDU_W)
    with pytest.raises(nnc.NNCFormatError, match="before the STR and MPS"):
        nnc.decode(HEAD[:4])
    with pytest.raises(nnc.NNCFormatError, match="empty bitstream"):
        nnc.decode(b"")


def test_duplicate_tensor_names_are_refused():
    with pytest.raises(nnc.NNCFormatError, match="'w' occurs twice") as info:
        nnc.decode(HEAD + NDU_W + NDU_W)
    assert info.value.offset == 47


def test_declared_size_beyond_max_elements_is_refused_without_allocating():
    with pytest.raises(nnc.NNCFormatError, match="more than the limit of 5"):
        nnc.decode(STREAM, max_elements=5)
    with pytest.raises(
        nnc.NNCFormatError, match="more than 8 elements in total"
    ) as info:
        nnc.decode(STREAM, max_total_elements=8)  # 6 + 3 elements
    assert info.value.unit == "NDU #4 'b'" and info.value.offset == 47
    assert len(nnc.decode(STREAM, max_elements=6, max_total_elements=9)) == 2

    header = hls.NDUHeader(hls.PT_INT, "huge", (1 << 16, 1 << 16))
    huge = hls.write_ndu(header, hls.ModelParameterSet(), b"\x00" * 8)
    with pytest.raises(nnc.NNCFormatError, match="shape \\(65536, 65536\\)"):
        nnc.decode(HEAD + huge)


def test_qp_outside_float32_step_range_is_refused():
    mps = hls.ModelParameterSet(quantization_parameter=4000)
    data = HEAD[:4] + hls.write_mps(mps) + HEAD[12:] + NDU_W
    with pytest.raises(nnc.NNCFormatError, match="qp 3968 gives a step size"):
        nnc.decode(data)


def test_wrong_profile_and_features_are_named():
    profile0 = HEAD[:3] + b"\x00" + HEAD[4:] + NDU_W
    with pytest.raises(nnc.NNCFormatError, match="general_profile_idc 0"):
        nnc.decode(profile0)
    mps_with_maps = bytearray(HEAD)
    mps_with_maps[7] |= 0x40  # mps_sparsification_flag
    with pytest.raises(nnc.NNCFormatError, match="performance maps"):
        nnc.decode(bytes(mps_with_maps) + NDU_W)


def test_tca_flag_without_base_is_refused_not_decoded():
    stream, base = differential_stream()
    with pytest.raises(nnc.NNCFormatError, match=re.escape("NDU #3 'a'")):
        nnc.decode(stream)
    wrong_shape = base.copy()
    wrong_shape.parameters["a"] = np.zeros(3, np.int32)
    with pytest.raises(nnc.NNCFormatError, match="base tensor has 3 values"):
        nnc.decode(stream, base=wrong_shape)


def test_inspect_of_corrupted_streams_only_raises_format_errors():
    stream, _ = differential_stream()
    for bit in range(8 * len(stream)):
        corrupted = bytearray(stream)
        corrupted[bit // 8] ^= 0x80 >> (bit % 8)
        try:
            units = nnc.inspect(bytes(corrupted))
        except nnc.NNCFormatError as error:
            assert_located(error, len(stream))
        else:
            assert sum(u["size"] for u in units) == len(stream)
