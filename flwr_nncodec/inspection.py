"""Describe the NNR units of a bitstream without decoding tensors."""

from __future__ import annotations

from flwr_nncodec import hls

__all__ = ["inspect"]


def inspect(
    bitstream: bytes, *, max_elements: int = hls.MAX_ELEMENTS_HARD_LIMIT
) -> list[dict[str, object]]:
    """Describe every NNR unit of ``bitstream`` without decoding tensors.

    Returns one dict per unit with ``index``, ``type`` ("STR", "MPS", "TPL",
    "NDU"), ``type_code``, ``offset``, ``size`` (bytes, size field included)
    and ``long_size``, plus the unit's fields. NDU dicts carry ``name``,
    ``shape``, ``payload_type``, ``qp`` (read from the first bins of the
    CABAC segment; None for INT), ``dq``, ``device_id``, ``parameter_id``,
    ``put_node_depth``, ``parent_node_id_present``, ``tca``,
    ``codebook_size`` and ``payload_size``. Raises NNCFormatError like
    :func:`decode` for malformed headers.
    """
    data = hls.bitstream_bytes(bitstream)
    parsed = hls.parse_stream(data, max_elements=max_elements)
    return [_describe_unit(data, unit, parsed.mps) for unit in parsed.units]


def _describe_unit(
    data: bytes, unit: hls.ParsedUnit, mps: hls.ModelParameterSet
) -> dict[str, object]:
    info: dict[str, object] = {
        "index": unit.index,
        "type": hls.unit_type_name(unit.unit_type),
        "type_code": unit.unit_type,
        "offset": unit.offset,
        "size": unit.size,
        "long_size": data[unit.offset] >= 0x80,
    }
    header = unit.header
    if unit.unit_type == hls.NNR_STR:
        info["general_profile_idc"] = header
    elif isinstance(header, hls.ModelParameterSet):
        info.update(
            topology_carriage=bool(header.topology_carriage_flag),
            quantization_method_flags=header.quantization_method_flags,
            parent_signalling=bool(header.parent_signalling_enabled_flag),
            pre_flag=bool(header.pre_flag),
            qp_density=header.qp_density,
            quantization_parameter=header.quantization_parameter,
        )
    elif isinstance(header, hls.Topology):
        info.update(
            topology_storage_format=header.storage_format,
            topology_compression_format=header.compression_format,
        )
    elif isinstance(header, hls.NDUHeader):
        info.update(_describe_ndu(data, unit, header, mps))
    return info


def _describe_ndu(
    data: bytes, unit: hls.ParsedUnit, header: hls.NDUHeader, mps: hls.ModelParameterSet
) -> dict[str, object]:
    qp = None
    if header.payload_type == hls.PT_FLOAT:
        payload = data[unit.payload_offset : unit.offset + unit.size]
        offset = _peek_qp_offset(payload, 6 + mps.qp_density)
        qp = None if offset is None else offset + mps.quantization_parameter
    codebook = header.codebook
    return {
        "name": header.name,
        "shape": header.dims,
        "payload_type": hls.PAYLOAD_TYPE_NAMES[header.payload_type],
        "qp": qp,
        "dq": bool(header.dq_flag),
        "device_id": header.device_id,
        "parameter_id": header.parameter_id,
        "put_node_depth": header.put_node_depth,
        "parent_node_id_present": bool(header.parent_node_id_present_flag),
        "tca": bool(header.temporal_context_modeling_flag),
        "codebook_size": 0 if codebook is None else len(codebook.values),
        "cabac_unary_length": header.cabac_unary_length_minus1 + 1,
        "scan_order": header.scan_order,
        "entry_points": len(header.entry_points),
        "header_size": unit.payload_offset - unit.offset,
        "payload_size": unit.payload_size,
    }


def _peek_qp_offset(segment: bytes, num_bins: int) -> int | None:
    """The qp offset: the first ``num_bins`` bypass bins of a CABAC segment.

    Bypass decoding at the initial range 510 (§3.6): the offset register
    starts with the first 9 bits; per bin, offset = 2*offset + next bit, and
    the bin is 1 (offset -= range) when offset >= range. Returns None when
    the segment is too short or its first bits are not a valid offset.
    """
    bits_needed = 9 + num_bins
    num_bytes = (bits_needed + 7) // 8
    if len(segment) < num_bytes:
        return None
    window = int.from_bytes(segment[:num_bytes], "big")
    bits = [(window >> (8 * num_bytes - 1 - i)) & 1 for i in range(bits_needed)]

    code_range = 510
    offset = int("".join(map(str, bits[:9])), 2)
    if offset >= code_range:
        return None  # an encoder never produces this
    result = 0
    for bit in bits[9:]:
        offset = 2 * offset + bit
        result = (result << 1) | (offset >= code_range)
        if offset >= code_range:
            offset -= code_range
    if result >= 1 << (num_bins - 1):
        result -= 1 << num_bins
    return result
