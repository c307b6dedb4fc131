"""Public NNC codec: encode and decode dicts of tensors (nnc-format §1, §2, §4).

A bitstream is what ``nncodec.nn.encode`` writes for a dict: STR, MPS, TPL
and one NDU per tensor, in dict order. The Python side writes and parses the
high-level syntax (:mod:`flwr_nncodec.hls`); the C++ core
(:mod:`flwr_nncodec._core`) quantises and codes each tensor's CABAC segment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from flwr_nncodec import _core, hls
from flwr_nncodec.base_state import BaseState
from flwr_nncodec.errors import NNCFormatError
from flwr_nncodec.inspection import inspect
from flwr_nncodec.options import (
    MAX_DECODABLE_QP_MAGNITUDE,
    EncodeOptions,
    make_options,
    resolve_num_threads,
)
from flwr_nncodec.quantization import (
    CodedTensor,
    base_levels,
    matrix_shape,
    plan_uniform,
    quantize_tensor,
    reconstruct,
    reconstruct_codebook,
)
from flwr_nncodec.sparsify import sparsify_structured, sparsify_unstructured

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_TOTAL_ELEMENTS",
    "EncodeResult",
    "decode",
    "decode_tensor",
    "encode",
    "encode_tensor",
    "encode_with_reconstruction",
    "inspect",
]

# What decode() allocates at most unless told otherwise (hls.py says why).
DEFAULT_MAX_ELEMENTS = hls.DEFAULT_MAX_ELEMENTS
DEFAULT_MAX_TOTAL_ELEMENTS = hls.DEFAULT_MAX_TOTAL_ELEMENTS
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


@dataclass(frozen=True)
class EncodeResult:
    """What :func:`encode_with_reconstruction` returns.

    Attributes
    ----------
    bitstream : bytes
        The NNC bitstream.
    reconstruction : dict[str, np.ndarray]
        Exactly what :func:`decode` returns for ``bitstream`` (float32, int32
        for integer tensors); tensors left out of the stream are absent.
    levels : dict[str, np.ndarray]
        int32 integers per coded tensor, in the tensor's shape: the
        reconstruction indices q (codebook tensors: codebook index minus the
        zero offset). These are what a :class:`BaseState` stores.
    qp : dict[str, int]
        qp signalled per float tensor.
    dropped : tuple[str, ...]
        Tensors left out because they quantise to all zeros under parent
        signalling (``compress_differences=True``, quirk Q15).
    """

    bitstream: bytes
    reconstruction: dict[str, np.ndarray]
    levels: dict[str, np.ndarray]
    qp: dict[str, int] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def encode(params: Mapping[str, object], **options: object) -> bytes:
    """Encode a dict of tensors into one NNC bitstream.

    Parameters
    ----------
    params : Mapping[str, array-like]
        Tensor name -> numpy array or torch tensor. Float tensors (float16,
        bfloat16, float32, float64) are quantised; integer and bool tensors
        are coded losslessly as NNR_PT_INT (values must fit int32). 0-d
        tensors are coded with shape (1,). Dict order is the NDU order.
    **options
        NNCodec's option names and defaults: ``qp=-32, qp_density=2,
        nonweight_qp=-75, use_dq=True, row_skipping=True, param_opt=True,
        bitdepth=None, approx_method="uniform", compress_differences=False,
        tca=False, base=None, update_base=False, sparsity=0.0,
        struct_spars_factor=0.0``, ``device_id`` (default: the base's, else
        0), except ``lambda_scale=0.5`` (rate-aware:
        RDOQ for URQ, rate-aware trellis for DQ; ``lambda_scale=0`` is
        NNCodec's squared-error choice and reproduces its streams). Also
        ``num_threads=0``: threads coding the float tensors, 0 = one per
        available core (the stream does not depend on it), and
        ``scan_order=0``: NNCodec's raster scan; 1..4 block scans of
        4 << scan_order with CABAC entry points, whose block rows decode in
        parallel. They cost bytes (each block row restarts the contexts,
        and the raster scan follows each row's scale): +0.1..0.6 % on
        matrices whose rows look alike, several percent when row scales
        differ (README). Block scans apply to plain float tensors (uniform,
        no bitdepth) with two or more dimensions, wider and taller than 1;
        the others keep the raster scan.

    Returns
    -------
    bytes
        The bitstream (decodable by NNCodec 2.1.3 and by :func:`decode`).

    Notes
    -----
    * ``qp`` applies to float tensors with ndim > 1, ``nonweight_qp`` to the
      others (a falsy ``nonweight_qp`` means ``qp - 2**(qp_density + 1)``).
    * If max|x| / step does not fit in int32, the qp of that tensor is raised
      to the smallest value that fits, as NNCodec does, and signalled.
    * ``sparsity`` and ``struct_spars_factor`` sparsify float tensors before
      coding whenever they are > 0 (NNCodec's ``nn.encode`` only does so
      when ``epoch > 0``; ``fl.encode`` always does).
    * Decoding returns float32 for every float input dtype.
    * float32 C-contiguous inputs (numpy, or CPU torch tensors) are read in
      place by the C++ core, never copied.
    * Empty tensors are coded like NNCodec codes them. NNCodec's decoder
      crashes (division by zero) on shapes like (3, 0), whose rows are
      empty; this package decodes them.
    * Inputs are not modified; the result shares no memory with them.
    """
    opts = make_options(**options)
    return _encode(params, opts, with_reconstruction=False).bitstream


def encode_with_reconstruction(
    params: Mapping[str, object], **options: object
) -> EncodeResult:
    """Like :func:`encode`, also returning what the decoder will reconstruct."""
    return _encode(params, make_options(**options), with_reconstruction=True)


def _encode(
    params: Mapping[str, object], opts: EncodeOptions, *, with_reconstruction: bool
) -> EncodeResult:
    """Both public encoders; ``reconstruction`` stays empty unless asked for.

    Plain float tensors (uniform, no bit depth) are quantised and coded in
    one ``_core.encode_tensors`` call on ``opts.num_threads`` threads; INT,
    bit-depth and codebook tensors go through :func:`quantize_tensor` and
    ``_core.encode_segment`` one by one. NDU order stays the dict order.
    """
    tensors, max_abs = _prepare_params(params)
    sparsified = _sparsify(tensors, opts)
    if sparsified is not tensors:
        tensors, max_abs = sparsified, {}

    mps = hls.ModelParameterSet(
        parent_signalling_enabled_flag=int(opts.compress_differences),
        qp_density=opts.qp_density,
    )
    planned: list[tuple[str, CodedTensor, hls.NDUHeader, np.ndarray | None]] = []
    batch: list[int] = []  # indices into planned coded by encode_tensors
    # A TCA base that does not fit is an error only if the tensor is coded,
    # not dropped as all zero: such tensors are quantised alone first.
    base_errors: dict[int, ValueError] = {}
    for parameter_id, (name, array) in enumerate(tensors.items()):
        plain = _is_plain_float(array, opts)
        if plain:
            coded = plan_uniform(name, array, opts, max_abs.get(name))
        else:
            coded = quantize_tensor(name, array, opts)
        header = _ndu_header(name, coded, parameter_id, opts)
        tca_base = None
        try:
            tca_base = _tca_base_for(name, header, opts.base, coded)
        except ValueError as exc:
            base_errors[len(planned)] = exc
            if plain:
                coded.values = _core.quantize(
                    coded.values, coded.qp, opts.qp_density, opts.use_dq,
                    opts.lambda_scale,
                )
                plain = False
        if plain:
            # Only the fused float path quantises in scan order (DQ follows it).
            header = replace(header, scan_order=scan_order_for(coded.dims,
                                                               opts.scan_order))
            batch.append(len(planned))
        planned.append((name, coded, header, tca_base))

    segments: dict[int, bytes] = {}
    batch_reconstructions: dict[int, np.ndarray] = {}  # the core's x_hat
    if batch:
        coded_batch = _core.encode_tensors(
            [planned[i][1].values for i in batch],
            [matrix_shape(planned[i][1].dims) for i in batch],
            [planned[i][1].qp for i in batch],
            qp_density=opts.qp_density,
            dq=opts.use_dq,
            lambda_scale=opts.lambda_scale,
            hdsp_flag_present=opts.compress_differences,
            row_skipping=opts.row_skipping,
            param_opt=opts.param_opt,
            tca_bases=[planned[i][3] for i in batch],
            unary_len=hls.NNCODEC_UNARY_LENGTH_MINUS1 + 1,
            num_threads=opts.num_threads,
            scan_orders=[planned[i][2].scan_order for i in batch],
            reconstruct=with_reconstruction,
        )
        for index, (segment, q, entry_points, x_hat) in zip(batch, coded_batch):
            name, coded, header, tca_base = planned[index]
            coded.values = q  # the float input is replaced by q
            segments[index] = segment
            if x_hat is not None:
                batch_reconstructions[index] = x_hat
            if entry_points:
                header = replace(header, entry_points=tuple(entry_points))
                planned[index] = (name, coded, header, tca_base)

    chunks = [hls.write_start_unit(), hls.write_mps(mps), hls.write_topology()]
    work_base = opts.base.copy() if opts.update_base else opts.base
    reconstruction: dict[str, np.ndarray] = {}
    levels: dict[str, np.ndarray] = {}
    qps: dict[str, int] = {}
    dropped: list[str] = []
    for index, (name, coded, header, tca_base) in enumerate(planned):
        if opts.compress_differences and _reconstructs_to_zero(coded):
            dropped.append(name)
            continue
        if index in base_errors:
            raise base_errors[index]
        segment = segments.get(index)
        if segment is None:
            segment = _encode_segment(coded, opts, header, tca_base)
        chunks.append(hls.write_ndu(header, mps, segment))
        shape = coded.dims
        level = base_levels(coded)
        if with_reconstruction:
            x_hat = batch_reconstructions.get(index)
            if x_hat is None:
                x_hat = reconstruct(coded)[0]
            reconstruction[name] = x_hat.reshape(shape)
        levels[name] = level.reshape(shape)
        if coded.qp is not None:
            qps[name] = coded.qp
        if opts.update_base and work_base is not None:
            work_base.advance(name, levels[name], opts.device_id, header.parameter_id)

    if opts.update_base and opts.base is not None and work_base is not None:
        _commit_base(opts.base, work_base)
    return EncodeResult(b"".join(chunks), reconstruction, levels, qps, tuple(dropped))


def _is_plain_float(array: np.ndarray, opts: EncodeOptions) -> bool:
    """A float tensor that encode_tensors codes: uniform, no bit depth."""
    return (
        array.dtype == np.float32
        and opts.bitdepth is None
        and opts.approx_method == "uniform"
    )


def _reconstructs_to_zero(coded: CodedTensor) -> bool:
    """True if the decoder would output all zeros (quirk Q15's drop test)."""
    if coded.codebook is not None:
        entries = np.asarray(coded.codebook.values, dtype=np.int64)
        return not np.any(entries[coded.values])
    return not np.any(coded.values)  # step > 0: q = 0 <=> x-hat = 0


def encode_tensor(x: object, *, name: str = "tensor", **options: object) -> bytes:
    """Encode one tensor as a one-NDU stream named ``name``."""
    return encode({name: x}, **options)


def _prepare_params(
    params: Mapping[str, object],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(codable arrays, max|x| of every non-empty float tensor) by name."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a mapping of names to arrays, got {type(params).__name__}"
        )
    tensors = {}
    max_abs: dict[str, float] = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if "\x00" in name:
            raise ValueError(f"tensor name {name!r} contains a NUL character")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"tensor name {name!r} cannot be encoded as UTF-8 ({exc.reason} "
                f"at position {exc.start}); NNC stores names as UTF-8"
            ) from None
        tensors[name], tensor_max_abs = _as_codable_array(name, value)
        if tensor_max_abs is not None:
            max_abs[name] = tensor_max_abs
    return tensors, max_abs


def _as_codable_array(name: str, value: object) -> tuple[np.ndarray, float | None]:
    """(float32 or int32 C-contiguous array, at least 1-D; max|x| of a
    non-empty float array, else None). Rejects NaN/inf.

    float32 C-contiguous inputs are not copied: the encoder only reads them.
    """
    array = _to_numpy(name, value)
    if array.ndim == 0:
        array = array.reshape(1)
    problem = hls.dims_problem(tuple(int(d) for d in array.shape))
    if problem is not None:
        raise ValueError(f"tensor {name!r} {problem}")
    kind = array.dtype.kind
    if kind == "f" or array.dtype.name == "bfloat16":
        with np.errstate(over="ignore"):
            converted = np.ascontiguousarray(array, dtype=np.float32)
        if not converted.size:
            return converted, None
        # min and max propagate NaN and keep +-inf: finite both <=> all finite.
        low, high = float(converted.min()), float(converted.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = (
                "NaN or infinity"
                if not np.isfinite(array.astype(np.float64)).all()
                else "values beyond the float32 range"
            )
            raise ValueError(f"tensor {name!r} contains {bad}")
        return converted, max(-low, high)
    if kind == "b":
        return np.ascontiguousarray(array, dtype=np.int32), None
    if kind in "iu":
        if array.size and (
            int(array.min()) < _INT32_MIN or int(array.max()) > _INT32_MAX
        ):
            raise ValueError(
                f"integer tensor {name!r} ({array.dtype}) has values in "
                f"[{int(array.min())}, {int(array.max())}], outside the int32 "
                f"range NNC codes integer tensors in"
            )
        return np.ascontiguousarray(array, dtype=np.int32), None
    raise TypeError(f"tensor {name!r} has unsupported dtype {array.dtype}")


def _to_numpy(name: str, value: object) -> np.ndarray:
    module = type(value).__module__ or ""
    if module.startswith("torch") and hasattr(value, "detach"):
        tensor = value.detach()  # type: ignore[attr-defined]
        # Meta tensors hold no values; quantized and sparse ones no plain
        # strided buffer numpy could read.
        if (
            tensor.is_meta
            or tensor.is_quantized
            or str(tensor.layout) != "torch.strided"
        ):
            kind = (
                "a meta tensor (no values)" if tensor.is_meta
                else "quantized" if tensor.is_quantized
                else f"of layout {tensor.layout}"
            )
            raise TypeError(
                f"tensor {name!r} ({tensor.dtype}) is {kind}; pass a dense "
                "tensor with values"
            )
        tensor = tensor.cpu()
        if tensor.is_floating_point() and tensor.element_size() < 4:
            tensor = tensor.float()  # bfloat16/float16: numpy has no bfloat16
        return tensor.numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"tensor {name!r} is not array-like: {exc}") from None
    return array


def _sparsify(
    tensors: dict[str, np.ndarray], opts: EncodeOptions
) -> dict[str, np.ndarray]:
    if opts.sparsity > 0:
        tensors = sparsify_unstructured(
            tensors, opts.qp, opts.qp_density, opts.sparsity
        )
    if opts.struct_spars_factor > 0:
        tensors = sparsify_structured(tensors, opts.struct_spars_factor)
    return tensors


def scan_order_for(dims: tuple[int, ...], requested: int) -> int:
    """The scan order a plain float tensor of ``dims`` is coded in.

    A block scan needs two or more dimensions and a matrix wider and taller
    than 1 (NNCodec codes such tensors in raster order and cannot write them
    with a scan order); raster otherwise.
    """
    if len(dims) < 2:
        return 0
    height, width = matrix_shape(dims)
    if height <= 1 or width <= 1:
        return 0
    return requested


def _ndu_header(
    name: str, coded: CodedTensor, parameter_id: int, opts: EncodeOptions
) -> hls.NDUHeader:
    base = opts.base
    # No base: a base model (depth 0). Otherwise one below the base's node.
    depth = 0 if base is None else base.put_node_depth.get(name, 0) + 1
    tca = bool(
        opts.compress_differences
        and opts.tca
        and base is not None
        and name in base.parameters
    )
    return hls.NDUHeader(
        payload_type=coded.payload_type,
        name=name,
        dims=coded.dims,
        dq_flag=int(coded.dq),
        device_id=opts.device_id,
        parameter_id=parameter_id,
        put_node_depth=depth,
        parent_node_id_present_flag=int(opts.compress_differences),
        temporal_context_modeling_flag=int(tca),
        codebook=coded.codebook,
        cabac_unary_length_minus1=hls.NNCODEC_UNARY_LENGTH_MINUS1,
    )


def _tca_base_for(
    name: str, header: hls.NDUHeader, base: BaseState | None, coded: CodedTensor
) -> np.ndarray | None:
    """The base levels of ``name`` when the NDU uses TCA, after NNCodec's checks."""
    if not header.temporal_context_modeling_flag:
        return None
    assert base is not None
    if header.device_id != base.device_id:
        raise ValueError(
            f"tensor {name!r}: device_id {header.device_id} differs from the "
            f"base's device_id {base.device_id}; TCA needs the same link"
        )
    base_pid = base.parameter_id.get(name)
    if base_pid is not None and base_pid != header.parameter_id:
        raise ValueError(
            f"tensor {name!r}: parameter_id {header.parameter_id} differs from "
            f"the base's parameter_id {base_pid} (tensor order changed?)"
        )
    levels = np.ascontiguousarray(base.parameters[name], dtype=np.int32).reshape(-1)
    if levels.size != math.prod(coded.dims):
        raise ValueError(
            f"tensor {name!r}: base has {levels.size} values, tensor has "
            f"{math.prod(coded.dims)}; TCA needs equal sizes"
        )
    return levels


def _encode_segment(
    coded: CodedTensor,
    opts: EncodeOptions,
    header: hls.NDUHeader,
    tca_base: np.ndarray | None,
) -> bytes:
    height, width = matrix_shape(coded.dims)
    codebook = coded.codebook
    return _core.encode_segment(
        coded.values,
        height,
        width,
        qp=coded.qp if coded.payload_type == hls.PT_FLOAT else None,
        qp_density=opts.qp_density,
        dq=coded.dq,
        hdsp_flag_present=bool(header.parent_node_id_present_flag),
        row_skipping=opts.row_skipping,
        param_opt=opts.param_opt,
        tca_base=tca_base,
        codebook_size=0 if codebook is None else len(codebook.values),
        codebook_zero_offset=0 if codebook is None else codebook.zero_offset,
        unary_len=hls.NNCODEC_UNARY_LENGTH_MINUS1 + 1,
    )


def _commit_base(target: BaseState, source: BaseState) -> None:
    target.device_id = source.device_id
    target.parameters = source.parameters
    target.put_node_depth = source.put_node_depth
    target.parameter_id = source.parameter_id


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def decode(
    bitstream: bytes,
    *,
    base: BaseState | None = None,
    update_base: bool = False,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_total_elements: int = DEFAULT_MAX_TOTAL_ELEMENTS,
    num_threads: int = 0,
) -> dict[str, np.ndarray]:
    """Decode an NNC bitstream into ``{name: array}`` in stream order.

    Parameters
    ----------
    bitstream : bytes-like
        ``bytes``, ``bytearray``, ``memoryview`` or a uint8 numpy array.
    base : BaseState, optional
        The link's base; required for NDUs that use TCA.
    update_base : bool
        Advance ``base`` with every decoded tensor (NNCodec's
        ``update_base_param``). The base changes only if the whole stream
        decodes.
    max_elements, max_total_elements : int
        Largest tensor, and largest sum over all tensors, in elements, that
        the decoder will allocate; checked on the headers before decoding.
        Defaults :data:`DEFAULT_MAX_ELEMENTS` (2**26) and
        :data:`DEFAULT_MAX_TOTAL_ELEMENTS` (2**28); pass larger values (CLI:
        ``--max-elements``, ``--max-total-elements``) for larger models.
    num_threads : int
        Threads decoding segments in parallel; 0 = one per available core.

    Returns
    -------
    dict[str, np.ndarray]
        float32 arrays for float tensors, int32 for NNR_PT_INT tensors. In a
        differential stream, tensors the encoder left out (all zero) are
        absent.

    Raises
    ------
    NNCFormatError
        For any malformed, truncated or unsupported stream, and for a TCA
        stream whose base does not match; the message names the unit and
        the byte offset.
    """
    data = hls.bitstream_bytes(bitstream)
    max_elements = _check_limit("max_elements", max_elements)
    max_total_elements = _check_limit("max_total_elements", max_total_elements)
    if update_base and base is None:
        raise ValueError("update_base=True needs a base (BaseState)")
    if base is not None and not isinstance(base, BaseState):
        raise TypeError(f"base must be a BaseState or None, got {type(base).__name__}")
    num_threads = resolve_num_threads(num_threads)
    parsed = hls.parse_stream(
        data, max_elements=max_elements, max_total_elements=max_total_elements
    )
    work_base = base.copy() if (update_base and base is not None) else base
    try:
        decoded = _decode_ndus_batched(data, parsed, work_base, num_threads)
    except (ValueError, IndexError, OverflowError, MemoryError):
        # Decode unit by unit to raise the first failing unit's exact error.
        decoded = [
            _decode_ndu(data, unit, unit.header, parsed.mps, work_base)
            for unit in parsed.ndus
        ]
    tensors: dict[str, np.ndarray] = {}
    for unit, (values, levels) in zip(parsed.ndus, decoded):
        header: hls.NDUHeader = unit.header  # type: ignore[assignment]
        tensors[header.name] = values
        if update_base and work_base is not None and levels is not None:
            try:
                work_base.advance(
                    header.name, levels, header.device_id, header.parameter_id
                )
            except ValueError as exc:
                raise NNCFormatError(
                    str(exc), unit=unit.label, offset=unit.offset
                ) from None
    if update_base and base is not None and work_base is not None:
        _commit_base(base, work_base)
    return tensors


def _check_limit(name: str, value: object) -> int:
    """A decode() element limit as a non-negative int; TypeError/ValueError
    naming the parameter otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def decode_tensor(bitstream: bytes, **kwargs: object) -> np.ndarray:
    """Decode a stream holding exactly one tensor and return that tensor."""
    tensors = decode(bitstream, **kwargs)  # type: ignore[arg-type]
    if len(tensors) != 1:
        raise ValueError(
            f"decode_tensor expects a stream with one tensor, found {len(tensors)}"
            f" ({', '.join(map(repr, tensors))})"
        )
    return next(iter(tensors.values()))


def _decode_ndus_batched(
    data: bytes,
    parsed: hls.ParsedStream,
    base: BaseState | None,
    num_threads: int,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(array, base levels or None) per NDU, all segments in one
    ``_core.decode_segments`` call. Raises ValueError on any fault; the
    caller then decodes unit by unit for the exact error.

    Unit names are unique (parse_stream checks), so the TCA base of each
    unit does not depend on the units decoded before it.
    """
    ndus = parsed.ndus
    coded = [u for u in ndus if u.header.payload_type != hls.PT_RAW_FLOAT]
    segments: dict[int, tuple[np.ndarray, int | None, int]] = {}
    if coded:
        headers: list[hls.NDUHeader] = [u.header for u in coded]  # type: ignore
        is_float = [h.payload_type == hls.PT_FLOAT for h in headers]
        unary_lengths = {h.cabac_unary_length_minus1 for h in headers}
        if len(unary_lengths) != 1:
            raise ValueError("units with different CABAC unary lengths")
        results = _core.decode_segments(
            [_payload_view(data, u) for u in coded],
            [matrix_shape(h.dims) for h in headers],
            has_qp=is_float,
            dq=[f and bool(h.dq_flag) for f, h in zip(is_float, headers)],
            qp_density=parsed.mps.qp_density,
            hdsp_flag_present=[bool(h.parent_node_id_present_flag) for h in headers],
            tca_bases=[
                _tca_base_for_decode(u, h, base) for u, h in zip(coded, headers)
            ],
            codebook_sizes=[
                0 if h.codebook is None else len(h.codebook.values) for h in headers
            ],
            codebook_zero_offsets=[
                0 if h.codebook is None else h.codebook.zero_offset for h in headers
            ],
            unary_len=unary_lengths.pop() + 1,
            num_threads=num_threads,
            scan_orders=[h.scan_order for h in headers],
            entry_points=[list(h.entry_points) for h in headers],
            dequantize_qp_offset=parsed.mps.quantization_parameter,
        )
        segments = {u.index: result for u, result in zip(coded, results)}

    decoded = []
    for unit in ndus:
        header: hls.NDUHeader = unit.header  # type: ignore[assignment]
        if header.payload_type == hls.PT_RAW_FLOAT:
            decoded.append(_decode_raw_float(data, unit, header))
        else:
            q, segment_qp, consumed, recon = segments[unit.index]
            decoded.append(
                _finish_segment(
                    unit, header, parsed.mps, q, segment_qp, consumed, recon
                )
            )
    return decoded


def _payload_view(data: bytes, unit: hls.ParsedUnit) -> np.ndarray:
    """The unit's CABAC segment as a uint8 view of ``data`` (no copy)."""
    return np.frombuffer(
        data, dtype=np.uint8, count=unit.payload_size, offset=unit.payload_offset
    )


def _decode_raw_float(
    data: bytes, unit: hls.ParsedUnit, header: hls.NDUHeader
) -> tuple[np.ndarray, None]:
    raw = np.frombuffer(
        data, dtype="<f4", count=unit.payload_size // 4, offset=unit.payload_offset
    )
    _check_finite(unit, raw, "NNR_PT_RAW_FLOAT payload with NaN or infinity")
    return raw.astype(np.float32).reshape(header.dims), None


def _decode_ndu(
    data: bytes,
    unit: hls.ParsedUnit,
    header: hls.NDUHeader,
    mps: hls.ModelParameterSet,
    base: BaseState | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(decoded array, base levels or None for RAW_FLOAT) of one NDU."""
    if header.payload_type == hls.PT_RAW_FLOAT:
        return _decode_raw_float(data, unit, header)

    tca_base = _tca_base_for_decode(unit, header, base)
    codebook = header.codebook
    height, width = matrix_shape(header.dims)
    is_float = header.payload_type == hls.PT_FLOAT
    try:
        q, segment_qp, consumed = _core.decode_segment(
            _payload_view(data, unit),
            height,
            width,
            has_qp=is_float,
            qp_density=mps.qp_density,
            dq=is_float and bool(header.dq_flag),  # NNCodec ignores it for INT
            hdsp_flag_present=bool(header.parent_node_id_present_flag),
            tca_base=tca_base,
            codebook_size=0 if codebook is None else len(codebook.values),
            codebook_zero_offset=0 if codebook is None else codebook.zero_offset,
            unary_len=header.cabac_unary_length_minus1 + 1,
            scan_order=header.scan_order,
            entry_points=list(header.entry_points),
        )
    except (ValueError, IndexError, OverflowError, MemoryError) as exc:
        raise NNCFormatError(
            f"CABAC segment starting at byte {unit.payload_offset}: {exc}",
            unit=unit.label,
            offset=unit.payload_offset,
        ) from None
    return _finish_segment(unit, header, mps, q, segment_qp, consumed)


def _finish_segment(
    unit: hls.ParsedUnit,
    header: hls.NDUHeader,
    mps: hls.ModelParameterSet,
    q: np.ndarray,
    segment_qp: int | None,
    consumed: int,
    recon: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(array, base levels) from a decoded segment: checks and dequantises.
    ``recon``: the core's dequantisation of ``q`` at this qp, known finite,
    when it made one (no codebook)."""
    if consumed != unit.payload_size:
        raise NNCFormatError(
            f"CABAC segment ends after {consumed} bytes but the unit holds "
            f"{unit.payload_size} payload bytes",
            unit=unit.label,
            offset=unit.payload_offset + consumed,
        )
    if header.payload_type != hls.PT_FLOAT:
        return q.reshape(header.dims), q.reshape(header.dims)

    assert segment_qp is not None
    qp = int(segment_qp) + mps.quantization_parameter
    step = (
        _core.step_size(qp, mps.qp_density)
        if abs(qp) <= MAX_DECODABLE_QP_MAGNITUDE
        else 0.0
    )
    if not (step > 0.0 and math.isfinite(step)):
        raise NNCFormatError(
            f"qp {qp} gives a step size outside the float32 range",
            unit=unit.label,
            offset=unit.payload_offset,
        )
    if header.codebook is not None:
        recon, levels = reconstruct_codebook(q, header.codebook, qp, mps.qp_density)
        _check_finite(unit, recon, f"qp {qp}")
    elif recon is None:
        recon, levels = _core.dequantize(q, qp, mps.qp_density), q
        _check_finite(unit, recon, f"qp {qp}")
    else:
        levels = q
    return recon.reshape(header.dims), levels.reshape(header.dims)


def _check_finite(unit: hls.ParsedUnit, values: np.ndarray, cause: str) -> None:
    """NNCFormatError naming the unit if ``values`` holds NaN or infinity.

    min and max propagate NaN and keep +-inf: two passes, no temporary array.
    """
    if not values.size:
        return
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise NNCFormatError(
            f"the reconstruction is not finite (values in [{low}, {high}], "
            f"{cause}); an encoder never writes such a stream",
            unit=unit.label,
            offset=unit.payload_offset,
        )


def _tca_base_for_decode(
    unit: hls.ParsedUnit, header: hls.NDUHeader, base: BaseState | None
) -> np.ndarray | None:
    """Base levels for a TCA NDU, checked as NNCodec asserts (§4)."""
    if not header.temporal_context_modeling_flag:
        return None

    def fail(reason: str) -> NNCFormatError:
        return NNCFormatError(
            f"NDU uses temporal context adaptation (TCA) but {reason}",
            unit=unit.label,
            offset=unit.offset,
        )

    name = header.name
    if base is None:
        raise fail("no base was given (pass base=BaseState of this link)")
    if name not in base.parameters:
        raise fail(f"the base holds no tensor {name!r}")
    if header.device_id != base.device_id:
        raise fail(
            f"its device_id {header.device_id} differs from the base's {base.device_id}"
        )
    if base.parameter_id.get(name) != header.parameter_id:
        raise fail(
            f"its parameter_id {header.parameter_id} differs from the base's "
            f"{base.parameter_id.get(name)}"
        )
    if base.put_node_depth.get(name) != header.put_node_depth - 1:
        raise fail(
            f"its put_node_depth {header.put_node_depth} is not the base's depth "
            f"{base.put_node_depth.get(name)} + 1 (missed or repeated update?)"
        )
    levels = np.ascontiguousarray(base.parameters[name], dtype=np.int32).reshape(-1)
    if levels.size != header.num_elements:
        raise fail(
            f"the base tensor has {levels.size} values, the NDU {header.num_elements}"
        )
    return levels
