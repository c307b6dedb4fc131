"""NNR high-level syntax: unit framing and the STR, MPS, TPL and NDU headers.

Byte layout as NNCodec 2.1.3 writes it (nnc-format §1.2-§1.6, profile 1).
The DeepCABAC segment after an NDU header is opaque here; the C++ core codes
it. Abbreviations from the standard: STR start unit, MPS model parameter set,
TPL topology unit, NDU compressed data unit, TCA temporal context adaptation
(the ``temporal_context_modeling_flag``), DQ dependent quantisation.

Parsing treats the input as hostile: every read is bounds-checked, every unit
size is checked against the buffer and against the bytes its header really
used, tensor shapes are capped before anything is allocated, and features
NNCodec never writes are refused with a message naming them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flwr_nncodec.bitio import BitReader, BitWriter
from flwr_nncodec.errors import NNCFormatError

__all__ = [
    "Codebook",
    "ModelParameterSet",
    "NDUHeader",
    "ParsedStream",
    "ParsedUnit",
    "Topology",
    "bitstream_bytes",
    "parse_stream",
    "unit_type_name",
    "write_mps",
    "write_ndu",
    "write_start_unit",
    "write_topology",
]

# nnr_unit_type values (§1.2)
NNR_STR, NNR_MPS, NNR_LPS, NNR_TPL, NNR_QNT, NNR_NDU, NNR_AGG = range(7)
_UNIT_NAMES = {
    NNR_STR: "STR",
    NNR_MPS: "MPS",
    NNR_LPS: "LPS",
    NNR_TPL: "TPL",
    NNR_QNT: "QNT",
    NNR_NDU: "NDU",
    NNR_AGG: "AGG",
}

# nnr_compressed_data_unit_payload_type values (§1.6)
PT_INT, PT_FLOAT, PT_RAW_FLOAT, PT_BLOCK = range(4)
PAYLOAD_TYPE_NAMES = {PT_INT: "INT", PT_FLOAT: "FLOAT", PT_RAW_FLOAT: "RAW_FLOAT"}

# mps_quantization_method_flags bits
QUANT_UNIFORM = 1  # NNR_QSU
QUANT_CODEBOOK = 2  # NNR_QCB

# topology_storage_format values whose payload is a plain st() string.
_STRING_TOPOLOGY_FORMATS = {0: "UNREC", 1: "NNEF", 2: "ONNX", 3: "PYT", 4: "TEF"}
TPL_UNREC = 0

SUPPORTED_PROFILE_IDC = 1
NNCODEC_UNARY_LENGTH_MINUS1 = 10  # 11 greater-than flags in every NNCodec stream
MAX_SCAN_ORDER = 4  # block scans of 8x8 .. 64x64 (4 << scan_order)
SHORT_UNIT_LIMIT_BYTES = 32768  # a unit shorter than this uses the 2-byte size
MAX_UNIT_BYTES = (1 << 31) - 1
MAX_TENSOR_DIMS = 32
MAX_ELEMENTS_HARD_LIMIT = (1 << 31) - 1  # the core's int32 element count
# What a decoder allocates at most unless told otherwise: 2**26 elements
# (256 MiB of float32) per tensor, 2**28 (1 GiB) for the whole stream. A
# stream of a few dozen bytes can claim any shape (all-zero rows cost one bin
# each), so the defaults must be what a caller can afford to allocate for an
# untrusted stream; they still cover every tensor of models up to ~250M
# parameters such as ResNet-50, BERT-base or a 7B model's 4096x4096 layers.
# Callers that know the model pass tighter or larger limits.
DEFAULT_MAX_ELEMENTS = 1 << 26
DEFAULT_MAX_TOTAL_ELEMENTS = 1 << 28

# Each renormalisation of the 9-bit CABAC range consumes at least one payload
# bit, and at most 128 decisions fit between two of them (rLPS >= 2 shrinks
# the range from <= 510 to below 256), so a segment of B bytes codes fewer
# than 128 * (8 * B + 16) + 128 < 1024 * B + 4096 bins. Every non-skipped
# element and every row flag costs at least one bin; NNCodec's all-zero 1-D
# tensors reach about 780 elements per byte.
_MAX_BINS_PER_PAYLOAD_BYTE = 1024
_BIN_SLACK = 4096


def unit_type_name(unit_type: int) -> str:
    return _UNIT_NAMES.get(unit_type, f"type {unit_type}")


# --------------------------------------------------------------------------
# Header records
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelParameterSet:
    """Fields of the model parameter set payload (§1.4), profile 1."""

    topology_carriage_flag: int = 1
    quantization_method_flags: int = QUANT_UNIFORM
    parent_signalling_enabled_flag: int = 0
    pre_flag: int = 0
    qp_density: int = 2
    quantization_parameter: int = 0
    base_model_id: str | None = None
    performance_metric_type: str | None = None
    validation_set_performance: float | None = None


@dataclass(frozen=True)
class Topology:
    """Fields of the topology unit (§1.5)."""

    storage_format: int = TPL_UNREC
    compression_format: int = 0
    data: str = ""


@dataclass(frozen=True)
class Codebook:
    """codebook() syntax (§1.6): integer entries, entry ``zero_offset`` is level 0."""

    egk: int
    zero_offset: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class NDUHeader:
    """Fields of one compressed data unit header (§1.6), single tensor."""

    payload_type: int
    name: str
    dims: tuple[int, ...]
    dq_flag: int = 0
    device_id: int = 0
    parameter_id: int = 0
    put_node_depth: int = 0
    node_id_present_flag: int = 1
    parent_node_id_present_flag: int = 0
    parent_node_id_type: int = 0
    temporal_context_modeling_flag: int = 0
    parent_device_id: int = 0
    codebook: Codebook | None = None
    cabac_unary_length_minus1: int = 10
    first_tensor_dimension_shift: int = 0
    scan_order: int = 0
    # Block scans: (delta_bits, offset, dq_state) per block row after the
    # first, as cabac_entry_point_list codes them (nnc-format §3.7).
    entry_points: tuple[tuple[int, int, int], ...] = ()
    decompressed_data_format: int | None = None
    parent_payload_hash: bytes | None = field(default=None, repr=False)

    @property
    def num_elements(self) -> int:
        return math.prod(self.dims)

    @property
    def height(self) -> int:
        """Rows of the coding matrix: shape[0]."""
        return self.dims[0] if self.dims else 1

    @property
    def width(self) -> int:
        """Columns of the coding matrix: the product of shape[1:]."""
        return math.prod(self.dims[1:])


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _frame_unit(unit_type: int, body: BitWriter) -> bytes:
    """Prefix a unit's header+payload bits with nnr_unit_size() (Q13).

    ``body`` starts with the 8-bit nnr_unit_header() common part. The size
    counts the whole unit, size field included.
    """
    payload = body.to_bytes()
    size_bytes = 2 + len(payload)
    framed = BitWriter()
    if size_bytes < SHORT_UNIT_LIMIT_BYTES:
        framed.u(1, 0)
        framed.u(15, size_bytes)
    else:
        size_bytes = 4 + len(payload)
        if size_bytes > MAX_UNIT_BYTES:
            raise ValueError(
                f"{unit_type_name(unit_type)} unit of {size_bytes} bytes exceeds "
                f"the format limit of {MAX_UNIT_BYTES} bytes"
            )
        framed.u(1, 1)
        framed.u(31, size_bytes)
    framed.raw_bytes(payload)
    return framed.to_bytes()


def _unit_header(unit_type: int) -> BitWriter:
    writer = BitWriter()
    writer.u(6, unit_type)
    writer.u(1, 1)  # independently_decodable_flag
    writer.u(1, 0)  # partial_data_counter_present_flag
    return writer


def write_start_unit(profile_idc: int = SUPPORTED_PROFILE_IDC) -> bytes:
    """NNR_STR: general_profile_idc only (4 bytes: ``00 04 02 01``)."""
    writer = _unit_header(NNR_STR)
    writer.u(8, profile_idc)
    return _frame_unit(NNR_STR, writer)


def write_mps(mps: ModelParameterSet) -> bytes:
    """NNR_MPS for profile 1, no performance maps."""
    writer = _unit_header(NNR_MPS)
    writer.u(1, mps.topology_carriage_flag)
    writer.u(4, 0)  # sparsification, pruning, unification, decomposition maps
    writer.u(3, mps.quantization_method_flags)
    writer.u(1, 0)  # mps_topology_indexed_reference_flag
    writer.u(1, mps.base_model_id is not None)
    writer.u(1, mps.validation_set_performance is not None)
    writer.u(1, 0)  # metric_type_performance_map_valid_flag
    writer.u(1, mps.parent_signalling_enabled_flag)
    writer.u(1, mps.pre_flag if mps.parent_signalling_enabled_flag else 0)
    writer.u(2, 0)  # reserved
    if mps.base_model_id is not None:
        _align_for_string(writer)
        writer.st(mps.base_model_id)
    if mps.validation_set_performance is not None:
        _align_for_string(writer)
        writer.st(mps.performance_metric_type or "")
    if mps.quantization_method_flags & (QUANT_UNIFORM | QUANT_CODEBOOK):
        writer.u(3, mps.qp_density)
        writer.i(13, mps.quantization_parameter)
    if mps.validation_set_performance is not None:
        writer.flt32(mps.validation_set_performance)
    writer.byte_alignment()
    return _frame_unit(NNR_MPS, writer)


def _align_for_string(writer: BitWriter) -> None:
    # st() relies on natural alignment (Q12); profile-1 MPS flags end at a
    # byte boundary, so this only guards against misuse.
    if not writer.is_byte_aligned:
        raise ValueError("MPS string field is not byte-aligned")


def write_topology(topology: Topology = Topology()) -> bytes:
    """NNR_TPL: two format bytes and topology_data st, no byte_alignment."""
    writer = _unit_header(NNR_TPL)
    writer.u(8, topology.storage_format)
    writer.u(8, topology.compression_format)
    writer.st(topology.data)
    return _frame_unit(NNR_TPL, writer)


def write_ndu(header: NDUHeader, mps: ModelParameterSet, payload: bytes) -> bytes:
    """NNR_NDU: the header of §1.6 in NNCodec's field order, then ``payload``."""
    writer = _unit_header(NNR_NDU)
    writer.u(5, header.payload_type)
    writer.u(1, 0)  # nnr_multiple_topology_elements_present_flag
    writer.u(1, header.decompressed_data_format is not None)
    writer.u(1, 1)  # input_parameters_present_flag
    writer.st(header.name)

    writer.u(1, header.node_id_present_flag)
    if header.node_id_present_flag:
        writer.ue(1, header.device_id)
        writer.ue(5, header.parameter_id)
        writer.ue(4, header.put_node_depth)
    if mps.parent_signalling_enabled_flag:
        writer.u(1, header.parent_node_id_present_flag)
        if header.parent_node_id_present_flag:
            if header.parent_node_id_type != 0:
                raise ValueError("only parent_node_id_type 0 (NDU id) is written")
            writer.u(2, 0)
            writer.u(1, header.temporal_context_modeling_flag)
            writer.ue(1, header.parent_device_id)
            if not header.node_id_present_flag:
                writer.ue(5, header.parameter_id)
                writer.ue(4, header.put_node_depth)

    if header.payload_type == PT_FLOAT:
        writer.u(1, header.codebook is not None)
        if header.codebook is not None:
            _write_codebook(writer, header.codebook)
    if header.payload_type in (PT_INT, PT_FLOAT):
        writer.u(1, header.dq_flag)
    if header.decompressed_data_format is not None:
        writer.u(7, header.decompressed_data_format)

    writer.u(1, 1)  # tensor_dimensions_flag
    writer.u(1, 1)  # cabac_unary_length_flag
    writer.u(4, 0)  # compressed_parameter_types
    writer.ue(1, len(header.dims))
    for dim in header.dims:
        writer.ue(7, dim)
    writer.u(8, header.cabac_unary_length_minus1)
    if len(header.dims) > 1:
        writer.ue(1, header.first_tensor_dimension_shift)
        writer.u(4, header.scan_order)
        if header.scan_order:
            _write_entry_points(writer, header)
    writer.byte_alignment()
    writer.raw_bytes(payload)
    return _frame_unit(NNR_NDU, writer)


def num_entry_points(dims: tuple[int, ...], scan_order: int) -> int:
    """Entries of cabac_entry_point_list: block rows of shape[0], minus one."""
    if scan_order == 0 or len(dims) < 2:
        return 0
    block_size = 4 << scan_order
    return max(0, -(-dims[0] // block_size) - 1)


def _write_entry_points(writer: BitWriter, header: NDUHeader) -> None:
    expected = num_entry_points(header.dims, header.scan_order)
    if len(header.entry_points) != expected:
        raise ValueError(
            f"tensor {header.name!r}: scan_order {header.scan_order} over "
            f"{header.dims[0]} rows needs {expected} entry points, got "
            f"{len(header.entry_points)}"
        )
    previous_delta = 0
    for j, (delta, offset, dq_state) in enumerate(header.entry_points):
        writer.u(8, offset)
        if header.dq_flag:
            writer.u(3, dq_state)
        if j == 0:
            writer.ue(11, delta)
        else:
            writer.ie(7, delta - previous_delta)
        previous_delta = delta


def _parse_entry_points(
    reader: BitReader, dims: tuple[int, ...], scan_order: int, dq_flag: int
) -> tuple[tuple[int, int, int], ...]:
    entries = []
    delta = 0
    for j in range(num_entry_points(dims, scan_order)):
        offset = reader.u(8, "cabac_entry_point_value")
        dq_state = reader.u(3, "cabac_entry_point_dq_state") if dq_flag else 0
        if j == 0:
            delta = reader.ue(11, "cabac_entry_point_offset")
        else:
            delta += reader.ie(7, "cabac_entry_point_offset_delta")
        if not 0 <= delta < 1 << 40:
            raise reader.error(
                f"entry point {j} lies {delta} bits after the previous one"
            )
        entries.append((delta, offset, dq_state))
    return tuple(entries)


def _write_codebook(writer: BitWriter, codebook: Codebook) -> None:
    size = len(codebook.values)
    zero = codebook.zero_offset
    writer.u(4, codebook.egk)
    writer.ue(2, size)
    writer.ie(2, zero - (size >> 1))  # codebook_centre_offset
    writer.ie(7, codebook.values[zero])  # codebook_zero_value
    previous = codebook.values[zero]
    for j in range(zero - 1, -1, -1):
        writer.ue(codebook.egk, previous - codebook.values[j] - 1)
        previous = codebook.values[j]
    previous = codebook.values[zero]
    for j in range(zero + 1, size):
        writer.ue(codebook.egk, codebook.values[j] - previous - 1)
        previous = codebook.values[j]


def codebook_num_bits(codebook: Codebook) -> int:
    """Number of bits the codebook() syntax takes for ``codebook``."""
    writer = BitWriter()
    _write_codebook(writer, codebook)
    return writer.num_bits


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedUnit:
    """One NNR unit located in the bitstream."""

    index: int  # position among all units
    unit_type: int
    offset: int  # byte offset of nnr_unit_size() in the bitstream
    size: int  # nnr_unit_size, in bytes
    label: str  # e.g. "NDU #3 'fc.weight'", used in error messages
    header: object  # int (STR profile) | ModelParameterSet | Topology | NDUHeader
    payload_offset: int = 0  # NDU only: first byte of the CABAC segment

    @property
    def payload_size(self) -> int:
        return self.offset + self.size - self.payload_offset


@dataclass(frozen=True)
class ParsedStream:
    profile_idc: int
    mps: ModelParameterSet
    topology: Topology | None
    units: list[ParsedUnit]

    @property
    def ndus(self) -> list[ParsedUnit]:
        return [unit for unit in self.units if unit.unit_type == NNR_NDU]


def bitstream_bytes(bitstream: object) -> bytes:
    """``bytes`` of a bytes-like bitstream (bytes, bytearray, memoryview, uint8[n])."""
    if isinstance(bitstream, bytes):
        return bitstream
    if isinstance(bitstream, (bytearray, memoryview)):
        return bytes(bitstream)
    if isinstance(bitstream, np.ndarray):
        if bitstream.dtype != np.uint8 or bitstream.ndim != 1:
            raise TypeError(
                f"bitstream array must be 1-D uint8, got {bitstream.dtype} "
                f"shape {bitstream.shape}"
            )
        return bitstream.tobytes()
    raise TypeError(f"bitstream must be bytes-like, got {type(bitstream).__name__}")


def parse_stream(
    data: bytes,
    *,
    max_elements: int = MAX_ELEMENTS_HARD_LIMIT,
    max_total_elements: int | None = None,
) -> ParsedStream:
    """Split ``data`` into NNR units and parse every header.

    The stream must be STR, MPS, an optional TPL, then NDUs, with nothing
    after the last unit. ``max_elements`` caps each tensor and
    ``max_total_elements`` (if given) all tensors together, before anything
    is allocated. Raises :class:`NNCFormatError` on any violation.
    """
    data = bytes(data)
    if not data:
        raise NNCFormatError("empty bitstream", offset=0)
    units: list[ParsedUnit] = []
    profile_idc: int | None = None
    mps: ModelParameterSet | None = None
    topology: Topology | None = None
    names: set[str] = set()
    total_elements = 0
    offset = 0
    while offset < len(data):
        index = len(units)
        unit_type, size, reader = _read_unit_frame(data, offset, index)
        kind = unit_type_name(unit_type)
        payload_offset = 0
        if index == 0 and unit_type != NNR_STR:
            raise reader.error(f"first unit is {kind}, expected STR", offset)
        if unit_type == NNR_STR:
            _expect_order(reader, index == 0, "STR must be the first unit", offset)
            header: object = _parse_start_unit(reader)
            profile_idc = header  # type: ignore[assignment]
            label = f"STR #{index}"
        elif unit_type == NNR_MPS:
            _expect_order(reader, index == 1, "MPS must follow the STR unit", offset)
            mps = _parse_mps(reader)
            header, label = mps, f"MPS #{index}"
        elif unit_type == NNR_TPL:
            _expect_order(
                reader, index == 2, "TPL must directly follow the MPS unit", offset
            )
            topology = _parse_topology(reader)
            header, label = topology, f"TPL #{index}"
        elif unit_type == NNR_NDU:
            _expect_order(reader, mps is not None, "NDU before the MPS unit", offset)
            assert mps is not None
            header = _parse_ndu_header(reader, mps, index, max_elements)
            name = header.name  # type: ignore[attr-defined]
            label = reader.unit
            if name in names:
                raise reader.error(f"tensor name {name!r} occurs twice", offset)
            names.add(name)
            total_elements += header.num_elements  # type: ignore[attr-defined]
            if max_total_elements is not None and total_elements > max_total_elements:
                raise reader.error(
                    f"the stream's tensors hold more than {max_total_elements} "
                    "elements in total, the decoder's limit (raise it with "
                    "decode(max_total_elements=...) or the CLI's "
                    "--max-total-elements if the model really is that large)",
                    offset,
                )
            payload_offset = reader.byte_offset
            _check_payload_plausible(reader, header, offset + size)  # type: ignore
        elif unit_type in _UNIT_NAMES:
            raise reader.error(f"{kind} units are not supported", offset)
        else:
            raise reader.error(f"unknown nnr_unit_type {unit_type}", offset)
        if unit_type != NNR_NDU:
            _expect_consumed(reader, kind)
        units.append(
            ParsedUnit(index, unit_type, offset, size, label, header, payload_offset)
        )
        offset += size

    if profile_idc is None or mps is None:
        raise NNCFormatError(
            "bitstream ends before the STR and MPS units", offset=len(data)
        )
    return ParsedStream(profile_idc, mps, topology, units)


def _read_unit_frame(
    data: bytes, offset: int, index: int
) -> tuple[int, int, BitReader]:
    """Read nnr_unit_size() and the unit type; return a reader bounded to the unit."""
    probe = BitReader(data, offset, unit=f"unit #{index}")
    long_form = probe.u(1, "nnr_unit_size_flag")
    size = probe.u(15 + 16 * long_form, "nnr_unit_size")
    size_field_bytes = 4 if long_form else 2
    if size < size_field_bytes + 1:
        raise probe.error(
            f"nnr_unit_size {size} is smaller than its own header "
            f"({size_field_bytes + 1} bytes)",
            offset,
        )
    if offset + size > len(data):
        raise probe.error(
            f"nnr_unit_size {size} runs past the end of the bitstream "
            f"({len(data) - offset} bytes left)",
            offset,
        )
    unit_type = probe.u(6, "nnr_unit_type")
    label = f"{unit_type_name(unit_type)} #{index}"
    reader = BitReader(data, offset + size_field_bytes, offset + size, unit=label)
    reader.skip_bits(6, "nnr_unit_type")
    reader.u(1, "independently_decodable_flag")
    if reader.u(1, "partial_data_counter_present_flag"):
        raise reader.error("partial data counters are not supported")
    return unit_type, size, reader


def _expect_order(
    reader: BitReader, condition: bool, message: str, unit_offset: int
) -> None:
    if not condition:
        raise reader.error(f"unexpected unit order: {message}", unit_offset)


def _expect_consumed(reader: BitReader, kind: str) -> None:
    if reader.bits_left:
        raise reader.error(
            f"{kind} unit has {reader.bits_left // 8} unused bytes after its "
            f"syntax (nnr_unit_size does not match the content)"
        )


def _parse_start_unit(reader: BitReader) -> int:
    profile = reader.u(8, "general_profile_idc")
    if profile != SUPPORTED_PROFILE_IDC:
        raise reader.error(
            f"general_profile_idc {profile} is not supported (only "
            f"{SUPPORTED_PROFILE_IDC})"
        )
    return profile


def _parse_mps(reader: BitReader) -> ModelParameterSet:
    topology_carriage = reader.u(1, "topology_carriage_flag")
    map_flags = reader.u(4, "mps performance map flags")
    if map_flags:
        raise reader.error("MPS performance maps are not supported")
    quant_flags = reader.u(3, "mps_quantization_method_flags")
    if reader.u(1, "mps_topology_indexed_reference_flag"):
        raise reader.error("indexed topology references are not supported")
    base_model_present = reader.u(1, "base_model_id_present_flag")
    validation_present = reader.u(1, "validation_set_performance_present_flag")
    metric_valid = reader.u(1, "metric_type_performance_map_valid_flag")
    parent_signalling = reader.u(1, "mps_parent_signalling_enabled_flag")
    pre_flag = reader.u(1, "nnr_pre_flag")
    reader.u(2, "nnr_reserved_zero_2bits")
    base_model_id = reader.st("base_model_id") if base_model_present else None
    metric_type = None
    if validation_present or metric_valid:
        metric_type = reader.st("performance_metric_type")
    if not quant_flags & (QUANT_UNIFORM | QUANT_CODEBOOK):
        raise reader.error(
            f"mps_quantization_method_flags {quant_flags} carry no qp_density; "
            "only quantised models are supported"
        )
    qp_density = reader.u(3, "mps_qp_density")
    mps_qp = reader.i(13, "mps_quantization_parameter")
    validation = (
        reader.flt32("validation_set_performance") if validation_present else None
    )
    reader.byte_alignment()
    return ModelParameterSet(
        topology_carriage_flag=topology_carriage,
        quantization_method_flags=quant_flags,
        parent_signalling_enabled_flag=parent_signalling,
        pre_flag=pre_flag if parent_signalling else 0,
        qp_density=qp_density,
        quantization_parameter=mps_qp,
        base_model_id=base_model_id,
        performance_metric_type=metric_type,
        validation_set_performance=validation,
    )


def _parse_topology(reader: BitReader) -> Topology:
    storage_format = reader.u(8, "topology_storage_format")
    compression_format = reader.u(8, "topology_compression_format")
    if storage_format not in _STRING_TOPOLOGY_FORMATS:
        raise reader.error(f"topology_storage_format {storage_format} is not supported")
    if compression_format != 0:
        raise reader.error(
            f"topology_compression_format {compression_format} is not supported"
        )
    return Topology(storage_format, compression_format, reader.st("topology_data"))


def _parse_ndu_header(
    reader: BitReader, mps: ModelParameterSet, index: int, max_elements: int
) -> NDUHeader:
    payload_type = reader.u(5, "nnr_compressed_data_unit_payload_type")
    if payload_type == PT_BLOCK:
        raise reader.error("NNR_PT_BLOCK payloads are not supported")
    if payload_type not in PAYLOAD_TYPE_NAMES:
        raise reader.error(f"unknown payload type {payload_type}")
    if reader.u(1, "nnr_multiple_topology_elements_present_flag"):
        raise reader.error("multiple topology elements per NDU are not supported")
    ddf_present = reader.u(1, "nnr_decompressed_data_format_present_flag")
    if not reader.u(1, "input_parameters_present_flag"):
        raise reader.error("out-of-band input parameters are not supported")
    name = reader.st("topology_elem_id")
    reader.unit = f"NDU #{index} {name!r}"

    node_id_present = reader.u(1, "node_id_present_flag")
    device_id = parameter_id = put_node_depth = 0
    if node_id_present:
        device_id = reader.ue(1, "device_id")
        parameter_id = reader.ue(5, "parameter_id")
        put_node_depth = reader.ue(4, "put_node_depth")
    parent_present = parent_type = tca_flag = parent_device_id = 0
    parent_hash = None
    if mps.parent_signalling_enabled_flag:
        parent_present = reader.u(1, "parent_node_id_present_flag")
    if parent_present:
        parent_type = reader.u(2, "parent_node_id_type")
        tca_flag = reader.u(1, "temporal_context_modeling_flag")
        if parent_type == 0:
            parent_device_id = reader.ue(1, "parent_device_id")
            if not node_id_present:
                parameter_id = reader.ue(5, "parameter_id")
                put_node_depth = reader.ue(4, "put_node_depth")
        elif parent_type in (1, 2):
            num_bytes = 32 if parent_type == 1 else 64
            parent_hash = bytes(
                reader.u(8, "parent_node_payload_hash") for _ in range(num_bytes)
            )
        else:
            raise reader.error(f"unknown parent_node_id_type {parent_type}")

    codebook = None
    if payload_type == PT_FLOAT and reader.u(1, "codebook_present_flag"):
        codebook = _parse_codebook(reader)
    dq_flag = 0
    if payload_type in (PT_INT, PT_FLOAT):
        dq_flag = reader.u(1, "dq_flag")
    ddf = reader.u(7, "nnr_decompressed_data_format") if ddf_present else None

    if not reader.u(1, "tensor_dimensions_flag"):
        raise reader.error("out-of-band tensor dimensions are not supported")
    unary_length_flag = reader.u(1, "cabac_unary_length_flag")
    cpt = reader.u(4, "compressed_parameter_types")
    if cpt:
        raise reader.error(f"compressed_parameter_types {cpt} is not supported")
    dims = _parse_dims(reader, max_elements)
    # NNCodec's decoder assumes 9 when the length is not sent (§1.6).
    unary_minus1 = reader.u(8, "cabac_unary_length_minus1") if unary_length_flag else 9
    shift = scan_order = 0
    entry_points: tuple[tuple[int, int, int], ...] = ()
    if len(dims) > 1:
        shift = reader.ue(1, "first_tensor_dimension_shift")
        if shift:
            raise reader.error(f"first_tensor_dimension_shift {shift} is not supported")
        scan_order = reader.u(4, "scan_order")
        if scan_order > MAX_SCAN_ORDER:
            raise reader.error(
                f"scan_order {scan_order} is reserved (0 raster, 1..{MAX_SCAN_ORDER} "
                "block scans)"
            )
        entry_points = _parse_entry_points(reader, dims, scan_order, dq_flag)
    reader.byte_alignment()
    return NDUHeader(
        payload_type=payload_type,
        name=name,
        dims=dims,
        dq_flag=dq_flag,
        device_id=device_id,
        parameter_id=parameter_id,
        put_node_depth=put_node_depth,
        node_id_present_flag=node_id_present,
        parent_node_id_present_flag=parent_present,
        parent_node_id_type=parent_type,
        temporal_context_modeling_flag=tca_flag,
        parent_device_id=parent_device_id,
        codebook=codebook,
        cabac_unary_length_minus1=unary_minus1,
        first_tensor_dimension_shift=shift,
        scan_order=scan_order,
        entry_points=entry_points,
        decompressed_data_format=ddf,
        parent_payload_hash=parent_hash,
    )


def dims_problem(dims: tuple[int, ...]) -> str | None:
    """Why ``dims`` cannot be coded, or None. Encoder and decoder share it.

    1..MAX_TENSOR_DIMS dimensions; the product of the non-zero dimensions
    at most MAX_ELEMENTS_HARD_LIMIT, so an empty tensor cannot claim an
    absurd shape such as (2**40, 0) either (work and numpy shapes stay
    bounded).
    """
    if not 1 <= len(dims) <= MAX_TENSOR_DIMS:
        return (
            f"has {len(dims)} dimensions; NNC codes 1..{MAX_TENSOR_DIMS} "
            "(count_tensor_dimensions)"
        )
    extent = 1
    for dim in dims:
        extent *= max(dim, 1)
        if extent > MAX_ELEMENTS_HARD_LIMIT:
            return (
                f"has shape {tuple(dims)}, whose non-zero dimensions multiply to "
                f"more than {MAX_ELEMENTS_HARD_LIMIT}"
            )
    return None


def _parse_dims(reader: BitReader, max_elements: int) -> tuple[int, ...]:
    start = reader.byte_offset
    count = reader.ue(1, "count_tensor_dimensions")
    if count == 0 or count > MAX_TENSOR_DIMS:
        raise reader.error(
            f"count_tensor_dimensions {count} outside 1..{MAX_TENSOR_DIMS}", start
        )
    dims = []
    num_elements = 1
    for axis in range(count):
        dim = reader.ue(7, f"tensor_dimensions[{axis}]")
        dims.append(dim)
        num_elements *= dim
    limit = min(max_elements, MAX_ELEMENTS_HARD_LIMIT)
    if num_elements > limit:
        raise reader.error(
            f"tensor of shape {tuple(dims)} has {num_elements} elements, more "
            f"than the limit of {limit} (max_elements; raise it with "
            "decode(max_elements=...) or the CLI's --max-elements if the model "
            "really is that large)",
            start,
        )
    problem = dims_problem(tuple(dims))
    if problem is not None:
        raise reader.error(f"tensor {problem}", start)
    return tuple(dims)


def _parse_codebook(reader: BitReader) -> Codebook:
    start = reader.byte_offset
    egk = reader.u(4, "codebook_egk")
    size = reader.ue(2, "codebook_size")
    if size == 0 or size > 8 * reader.bits_left + 1:
        raise reader.error(f"codebook_size {size} is impossible here", start)
    zero = (size >> 1) + reader.ie(2, "codebook_centre_offset")
    if not 0 <= zero < size:
        raise reader.error(f"codebook zero offset {zero} outside 0..{size - 1}", start)
    values = [0] * size
    values[zero] = reader.ie(7, "codebook_zero_value")
    for j in range(zero - 1, -1, -1):
        values[j] = values[j + 1] - reader.ue(egk, "codebook_delta_left") - 1
    for j in range(zero + 1, size):
        values[j] = values[j - 1] + reader.ue(egk, "codebook_delta_right") + 1
    if values[0] < -(1 << 31) or values[-1] >= 1 << 31:
        raise reader.error("codebook entries do not fit in int32", start)
    return Codebook(egk=egk, zero_offset=zero, values=tuple(values))


def _check_payload_plausible(
    reader: BitReader, header: NDUHeader, unit_end: int
) -> None:
    """Refuse shapes the payload cannot possibly describe, before allocating."""
    payload_bytes = unit_end - reader.byte_offset
    if header.payload_type == PT_RAW_FLOAT:
        if payload_bytes != 4 * header.num_elements:
            raise reader.error(
                f"RAW_FLOAT payload has {payload_bytes} bytes, shape "
                f"{header.dims} needs {4 * header.num_elements}"
            )
        return
    if payload_bytes <= 0:
        raise reader.error("NDU has no CABAC payload")
    if header.codebook is not None and len(header.codebook.values) == 1:
        return  # a one-entry codebook codes no bins per element
    max_bins = _MAX_BINS_PER_PAYLOAD_BYTE * payload_bytes + _BIN_SLACK
    row_skip_possible = header.width > 1 and header.height > 1
    coded_units = header.height if row_skip_possible else header.num_elements
    if coded_units > max_bins:
        raise reader.error(
            f"shape {header.dims} cannot be coded in a {payload_bytes}-byte "
            "payload (too many elements for the data)"
        )
