"""NNR high-level syntax: primitive codings, unit framing and header bytes.

Golden bytes come from nnc-format §1.1-§1.11 (NNCodec 2.1.3 output).
"""

from __future__ import annotations

import pytest

from flwr_nncodec import hls
from flwr_nncodec.bitio import BitReader, BitWriter
from flwr_nncodec.errors import NNCFormatError

# Example A of nnc-format §1.9 split into its units.
STR_BYTES = bytes.fromhex("00040201")
MPS_BYTES = bytes.fromhex("0008068100400080")
TPL_BYTES = bytes.fromhex("00060e000000")
NDU_A_HEADER = bytes.fromhex("001d16097700d041c120a0c2a080")
NDU_A_SEGMENT = bytes.fromhex("dff7a00ea44606501f6042ba91dcb0")
NDU_B_HEADER = bytes.fromhex("001f16096200d0c1c3830a80")
NDU_B_SEGMENT = bytes.fromhex("b4d80007380003931e00000019984800018ffe")


def bits_of(writer: BitWriter) -> str:
    """The written bits as a '0'/'1' string (pads to a byte with zeros)."""
    pad = (-writer.num_bits) % 8
    if pad:
        writer.u(pad, 0)
    return "".join(f"{b:08b}" for b in writer.to_bytes())


# --------------------------------------------------------------------------
# Primitive codings (§1.1)


@pytest.mark.parametrize(
    ("order", "value", "code"),
    [
        (0, 0, "1"),
        (0, 1, "010"),
        (0, 2, "011"),
        (0, 3, "00100"),
        (1, 0, "10"),
        (1, 3, "0101"),  # device_id 3 of §1.11
        (4, 1, "10001"),  # put_node_depth 1 of §1.11
        (5, 1, "100001"),  # parameter_id 1 of §1.10
        (7, 3, "10000011"),  # a dimension of 3
    ],
)
def test_exp_golomb_codes_match_the_spec(order, value, code):
    writer = BitWriter()
    writer.ue(order, value)
    assert bits_of(writer).startswith(code)
    assert writer.num_bits == len(code) + (-len(code)) % 8

    reader = BitReader(
        int(code.ljust(8 * ((len(code) + 7) // 8), "0"), 2).to_bytes(
            (len(code) + 7) // 8, "big"
        )
    )
    assert reader.ue(order, "x") == value


@pytest.mark.parametrize(
    ("value", "mapped"), [(0, 0), (1, 1), (-1, 2), (2, 3), (-2, 4)]
)
def test_signed_exp_golomb_mapping(value, mapped):
    signed, unsigned = BitWriter(), BitWriter()
    signed.ie(2, value)
    unsigned.ue(2, mapped)
    assert bits_of(signed) == bits_of(unsigned)

    reader = BitReader(bytes.fromhex(bits_to_hex(bits_of(unsigned))))
    assert reader.ie(2, "x") == value


def bits_to_hex(bits: str) -> str:
    return int(bits, 2).to_bytes(len(bits) // 8, "big").hex()


def test_fixed_width_and_twos_complement_fields():
    writer = BitWriter()
    writer.u(3, 2)  # mps_qp_density 2
    writer.i(13, 0)
    writer.i(8, -32)
    writer.u(8, 0)
    assert writer.to_bytes() == bytes.fromhex("4000e000")

    reader = BitReader(writer.to_bytes())
    assert (reader.u(3, "a"), reader.i(13, "b"), reader.i(8, "c")) == (2, 0, -32)


def test_byte_alignment_always_writes_a_bit():
    aligned = BitWriter()
    aligned.byte_alignment()
    assert aligned.to_bytes() == b"\x80"  # quirk Q12: a whole 0x80 byte

    partial = BitWriter()
    partial.u(3, 0b101)
    partial.byte_alignment()
    assert partial.to_bytes() == bytes([0b10110000])


def test_string_and_float_fields():
    writer = BitWriter()
    writer.st("fc.weight")
    writer.flt32(1.5)
    data = writer.to_bytes()
    assert data == b"fc.weight\x00" + bytes.fromhex("0000c03f")

    reader = BitReader(data)
    assert reader.st("name") == "fc.weight"
    assert reader.flt32("f") == 1.5


def test_writer_rejects_values_that_do_not_fit():
    writer = BitWriter()
    with pytest.raises(ValueError, match="does not fit in u\\(3\\)"):
        writer.u(3, 8)
    with pytest.raises(ValueError, match="does not fit in i\\(8\\)"):
        writer.i(8, -129)
    writer.u(1, 1)
    with pytest.raises(ValueError, match="byte boundary"):
        writer.st("x")
    aligned = BitWriter()
    with pytest.raises(ValueError, match="NUL"):
        aligned.st("a\x00b")


def test_reader_reports_unit_and_offset_when_data_runs_out():
    reader = BitReader(b"\x00\x00\x01", start=1, end=2, unit="NDU #3 'w'")
    reader.u(4, "first")
    with pytest.raises(NNCFormatError) as info:
        reader.u(8, "dims")
    assert info.value.unit == "NDU #3 'w'"
    assert info.value.offset == 1
    assert "NDU #3 'w'" in str(info.value) and "byte offset 1" in str(info.value)
    assert "dims" in str(info.value)


def test_reader_caps_exp_golomb_prefix():
    reader = BitReader(bytes(64), unit="NDU #3 'w'")
    with pytest.raises(NNCFormatError, match="Exp-Golomb prefix longer"):
        reader.ue(7, "tensor_dimensions[0]")


def test_reader_string_needs_terminator_and_utf8():
    with pytest.raises(NNCFormatError, match="no NUL terminator"):
        BitReader(b"abc").st("topology_elem_id")
    with pytest.raises(NNCFormatError, match="not valid UTF-8"):
        BitReader(b"\xff\xfe\x00").st("topology_elem_id")


def test_strict_byte_alignment_on_read():
    with pytest.raises(NNCFormatError, match="alignment bit is 0"):
        BitReader(b"\x00").byte_alignment()
    with pytest.raises(NNCFormatError, match="non-zero padding"):
        BitReader(b"\x81").byte_alignment()


# --------------------------------------------------------------------------
# Unit framing and the STR/MPS/TPL units (§1.2-§1.5, Q13)


def test_start_mps_and_topology_units_are_nncodecs_bytes():
    assert hls.write_start_unit() == STR_BYTES
    assert hls.write_mps(hls.ModelParameterSet()) == MPS_BYTES
    assert hls.write_topology() == TPL_BYTES


def test_mps_with_parent_signalling():
    mps = hls.ModelParameterSet(parent_signalling_enabled_flag=1)
    assert hls.write_mps(mps) == bytes.fromhex("0008068108400080")  # §1.4, §1.11


def ndu_with_payload(num_payload_bytes: int) -> bytes:
    header = hls.NDUHeader(payload_type=hls.PT_FLOAT, name="w", dims=(2, 3), dq_flag=1)
    return hls.write_ndu(header, hls.ModelParameterSet(), bytes(num_payload_bytes))


def test_unit_size_switches_to_the_long_form_at_32768_bytes():
    header_bytes = len(NDU_A_HEADER)  # 14, size field included
    short = ndu_with_payload(32767 - header_bytes)
    assert len(short) == 32767
    assert short[:2] == (32767).to_bytes(2, "big")

    long = ndu_with_payload(32768 - header_bytes)
    assert len(long) == 32770  # 4-byte size field
    assert long[:4] == (0x80000000 | 32770).to_bytes(4, "big")
    assert long[4:] == short[2:] + b"\x00"


# --------------------------------------------------------------------------
# NDU headers (§1.6, §1.9-§1.11)


def test_ndu_headers_of_worked_examples_a_and_b():
    mps = hls.ModelParameterSet()
    header_a = hls.NDUHeader(hls.PT_FLOAT, "w", (2, 3), dq_flag=1)
    header_b = hls.NDUHeader(hls.PT_FLOAT, "b", (3,), dq_flag=1, parameter_id=1)
    assert hls.write_ndu(header_a, mps, NDU_A_SEGMENT) == NDU_A_HEADER + NDU_A_SEGMENT
    assert hls.write_ndu(header_b, mps, NDU_B_SEGMENT) == NDU_B_HEADER + NDU_B_SEGMENT


def test_urq_header_differs_only_in_dq_flag():
    header = hls.NDUHeader(hls.PT_FLOAT, "w", (2, 3), dq_flag=0)
    written = hls.write_ndu(header, hls.ModelParameterSet(), b"\x00")
    assert written[6:8] == bytes.fromhex("d040")  # §1.9: 'd0 40' without DQ


def test_differential_tca_header_fields_of_example_c():
    mps = hls.ModelParameterSet(parent_signalling_enabled_flag=1)
    header = hls.NDUHeader(
        hls.PT_FLOAT,
        "w",
        (2, 3),
        dq_flag=0,
        device_id=3,
        put_node_depth=1,
        parent_node_id_present_flag=1,
        temporal_context_modeling_flag=1,
    )
    written = hls.write_ndu(header, mps, b"\x00")

    bits = "".join(f"{b:08b}" for b in written[6:])  # after size, type and "w\0"
    expected = (
        "1"
        "0101"
        "100000"
        "10001"  # node id: device 3, parameter 0, depth 1
        "1"
        "00"
        "1"
        "10"  # parent present, type 0, TCA 1, parent_device_id 0
        "0"
        "0"  # codebook_present, dq_flag
        "1"
        "1"
        "0000"  # tensor_dimensions_flag, cabac_unary_length_flag, cpt 0
        "0100"
        "10000010"
        "10000011"  # count ue(1)=2, dims ue(7)=2 and 3
        "00001010"  # cabac_unary_length_minus1 10
        "1"
        "0000"  # first_tensor_dimension_shift 0, scan_order 0
    )
    assert bits.startswith(expected)

    parsed = (
        hls.parse_stream(
            hls.write_start_unit() + hls.write_mps(mps) + hls.write_topology() + written
        )
        .ndus[0]
        .header
    )
    assert parsed == header


def test_int_payload_header_has_dq_but_no_codebook_flag():
    header = hls.NDUHeader(hls.PT_INT, "n", (4,))
    written = hls.write_ndu(header, hls.ModelParameterSet(), b"\x00")
    bits = "".join(f"{b:08b}" for b in written[2:])
    # type NDU, independently decodable, no partial counter; PT_INT, single
    # element, no decompressed format, input parameters present; "n"
    assert bits.startswith("00010110000000010110111000000000")
    # node id 1, device 0, parameter 0, depth 0, then dq_flag 0 (no codebook flag)
    assert bits[32:].startswith("110100000100000110000")
    parsed = parse_one_ndu(written)
    assert parsed.payload_type == hls.PT_INT and parsed.codebook is None


def parse_one_ndu(
    ndu: bytes, mps: hls.ModelParameterSet | None = None
) -> hls.NDUHeader:
    mps = mps or hls.ModelParameterSet()
    stream = hls.write_start_unit() + hls.write_mps(mps) + hls.write_topology() + ndu
    return hls.parse_stream(stream).ndus[0].header


def test_codebook_syntax_round_trips():
    codebook = hls.Codebook(egk=1, zero_offset=2, values=(-80, -6, 0, 10, 34, 180))
    header = hls.NDUHeader(hls.PT_FLOAT, "few", (16, 16), codebook=codebook)
    parsed = parse_one_ndu(hls.write_ndu(header, hls.ModelParameterSet(), b"\x00"))
    assert parsed.codebook == codebook

    writer = BitWriter()
    hls._write_codebook(writer, hls.Codebook(0, 0, (5,)))
    # egk 0000, size ue(2)=1 '101', centre offset ie(2)=0 '100', zero value
    # ie(7)=5 -> ue(7)=9 '10001001'
    assert bits_of(writer).startswith("000010110010001001")


def test_parser_locates_units_of_example_b():
    stream = (
        STR_BYTES
        + MPS_BYTES
        + TPL_BYTES
        + NDU_A_HEADER
        + NDU_A_SEGMENT
        + NDU_B_HEADER
        + NDU_B_SEGMENT
    )
    parsed = hls.parse_stream(stream)

    assert [(u.unit_type, u.offset, u.size) for u in parsed.units] == [
        (0, 0, 4),
        (1, 4, 8),
        (3, 12, 6),
        (5, 18, 29),
        (5, 47, 31),
    ]
    assert parsed.profile_idc == 1 and parsed.mps == hls.ModelParameterSet()
    first, second = parsed.ndus
    assert (first.header.name, first.header.dims, first.payload_offset) == (
        "w",
        (2, 3),
        32,
    )
    assert (second.header.name, second.header.parameter_id) == ("b", 1)
    assert second.label == "NDU #4 'b'" and second.payload_size == 19


def test_entry_point_list_bits_and_round_trip():
    # 20 rows in 8x8 blocks: 3 block rows, 2 entry points. DQ: u(8) offset,
    # u(3) state, then ue(11) of the first delta, ie(7) of the change.
    header = hls.NDUHeader(hls.PT_FLOAT, "w", (20, 20), dq_flag=1, scan_order=1,
                           entry_points=((795, 91, 6), (805, 62, 3)))
    writer = hls.BitWriter()
    hls._write_entry_points(writer, header)
    writer.byte_alignment()
    bits = "".join(f"{b:08b}" for b in writer.to_bytes())
    assert bits.startswith(
        "01011011" "110" "1" "01100011011"  # offset 91, state 6, ue(11) of 795
        "00111110" "011" "1" "0010011"  # offset 62, state 3, ie(7) of +10: ue 19
        "1"  # byte_alignment's stop bit
    )
    mps = hls.ModelParameterSet(qp_density=2)
    unit = hls.write_ndu(header, mps, b"\x00")
    assert parse_one_ndu(unit).entry_points == header.entry_points


def test_parser_refuses_unsupported_features_by_name():
    mps = hls.ModelParameterSet()
    reserved_scan = hls.NDUHeader(hls.PT_FLOAT, "w", (2, 3), scan_order=7)
    with pytest.raises(NNCFormatError, match="scan_order 7 is reserved"):
        parse_one_ndu(hls.write_ndu(reserved_scan, mps, b"\x00"))

    header = hls.NDUHeader(hls.PT_FLOAT, "w", (3,))
    block = bytearray(hls.write_ndu(header, mps, b"\x00"))
    block[3] = (block[3] & 0x07) | (hls.PT_BLOCK << 3)
    with pytest.raises(NNCFormatError, match="NNR_PT_BLOCK"):
        parse_one_ndu(bytes(block))

    partial = bytearray(hls.write_ndu(header, mps, b"\x00"))
    partial[2] |= 0x01  # partial_data_counter_present_flag
    with pytest.raises(NNCFormatError, match="partial data counter"):
        parse_one_ndu(bytes(partial))


def test_parser_caps_dimensions_before_allocating():
    mps = hls.ModelParameterSet()
    huge = hls.NDUHeader(hls.PT_FLOAT, "w", (1 << 20, 1 << 20))
    with pytest.raises(NNCFormatError, match="more than the limit"):
        parse_one_ndu(hls.write_ndu(huge, mps, b"\x00"))

    many = hls.NDUHeader(hls.PT_FLOAT, "w", (1,) * 40)
    with pytest.raises(NNCFormatError, match="count_tensor_dimensions 40"):
        parse_one_ndu(hls.write_ndu(many, mps, b"\x00"))

    # A 1-D tensor of 10**6 elements cannot fit in a 3-byte CABAC segment
    # (at most 1024 * 3 + 4096 bins); 7000 elements can.
    implausible = hls.NDUHeader(hls.PT_FLOAT, "w", (10**6,))
    with pytest.raises(NNCFormatError, match="cannot be coded in a 3-byte payload"):
        parse_one_ndu(hls.write_ndu(implausible, mps, b"\x00\x00\x00"))
    plausible = hls.NDUHeader(hls.PT_FLOAT, "w", (7000,))
    assert parse_one_ndu(hls.write_ndu(plausible, mps, b"\x00\x00\x00")) == plausible
    # With row skipping possible only the rows must fit, not the elements.
    rows = hls.NDUHeader(hls.PT_FLOAT, "w", (7000, 10**5))
    assert parse_one_ndu(hls.write_ndu(rows, mps, b"\x00\x00\x00")) == rows
