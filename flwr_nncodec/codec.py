"""Public NNC codec: encode and decode dicts of tensors (nnc-format §1, §2, §4).

A bitstream is what ``nncodec.nn.encode`` writes for a dict: STR, MPS, TPL
and one NDU per tensor, in dict order. The Python side writes and parses the
high-level syntax (:mod:`flwr_nncodec.hls`); the C++ core
(:mod:`flwr_nncodec._core`) quantises and codes each tensor's CABAC segment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from flwr_nncodec import _core, hls
from flwr_nncodec.base_state import BaseState
from flwr_nncodec.errors import NNCFormatError
from flwr_nncodec.options import EncodeOptions, make_options, qp_range
from flwr_nncodec.sparsify import sparsify_structured, sparsify_unstructured

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "EncodeResult",
    "decode",
    "decode_tensor",
    "encode",
    "encode_tensor",
    "encode_with_reconstruction",
    "inspect",
]

# Largest tensor decode() allocates unless told otherwise (1 GiB of float32).
DEFAULT_MAX_ELEMENTS = 1 << 28
CABAC_UNARY_LENGTH_MINUS1 = 10  # NNCodec's value: 11 greater-than flags
_INT32_MAX = (1 << 31) - 1
# NNCodec's overflow check: |round(x / step)| must stay below these (§2.2).
_OVERFLOW_LIMIT_DQ = (1 << 31) - 3
_OVERFLOW_LIMIT_URQ = (1 << 31) - 1
# The core refuses max|x| / step above this (its DQ trellis looks 2 steps out).
_CORE_SCALED_LIMIT = 2147483647.0 - 4.0
_BITDEPTH_PERCENTILE = 99.95
_CODEBOOK_EGK_CHOICES = range(16)
_CODEBOOK_FULL_SEARCH_SIZE = 16


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


@dataclass
class _CodedTensor:
    """One tensor after quantisation, ready for its NDU."""

    payload_type: int
    dims: tuple[int, ...]
    values: np.ndarray  # int32[n]: q, INT values, or codebook indices
    qp: int | None = None
    qp_density: int = 2
    dq: bool = False
    codebook: hls.Codebook | None = None
    segment: bytes | None = None  # already coded (codebook trial)


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
        bitdepth=None, approx_method="uniform", lambda_scale=0.0,
        compress_differences=False, tca=False, base=None, update_base=False,
        device_id=0, sparsity=0.0, struct_spars_factor=0.0``.

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
    """
    return encode_with_reconstruction(params, **options).bitstream


def encode_with_reconstruction(
    params: Mapping[str, object], **options: object
) -> EncodeResult:
    """Like :func:`encode`, also returning what the decoder will reconstruct."""
    opts = make_options(**options)
    tensors = _prepare_params(params)
    tensors = _sparsify(tensors, opts)

    mps = hls.ModelParameterSet(
        parent_signalling_enabled_flag=int(opts.compress_differences),
        qp_density=opts.qp_density,
    )
    chunks = [hls.write_start_unit(), hls.write_mps(mps), hls.write_topology()]
    work_base = opts.base.copy() if opts.update_base else opts.base
    reconstruction: dict[str, np.ndarray] = {}
    levels: dict[str, np.ndarray] = {}
    qps: dict[str, int] = {}
    dropped: list[str] = []

    for parameter_id, (name, array) in enumerate(tensors.items()):
        coded = _quantize_tensor(name, array, opts)
        recon, level = _reconstruct_encoded(coded)
        if opts.compress_differences and not np.any(recon):
            dropped.append(name)
            continue
        header = _ndu_header(name, coded, parameter_id, opts)
        tca_base = _tca_base_for(name, header, opts.base, coded)
        segment = coded.segment
        if segment is None:
            segment = _encode_segment(coded, opts, header, tca_base)
        chunks.append(hls.write_ndu(header, mps, segment))
        shape = coded.dims
        reconstruction[name] = recon.reshape(shape)
        levels[name] = level.reshape(shape)
        if coded.qp is not None:
            qps[name] = coded.qp
        if opts.update_base and work_base is not None:
            work_base.advance(name, levels[name], opts.device_id, parameter_id)

    if opts.update_base and opts.base is not None and work_base is not None:
        _commit_base(opts.base, work_base)
    return EncodeResult(b"".join(chunks), reconstruction, levels, qps, tuple(dropped))


def encode_tensor(x: object, *, name: str = "tensor", **options: object) -> bytes:
    """Encode one tensor as a one-NDU stream named ``name``."""
    return encode({name: x}, **options)


def _prepare_params(params: Mapping[str, object]) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a mapping of names to arrays, got {type(params).__name__}"
        )
    tensors = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if "\x00" in name:
            raise ValueError(f"tensor name {name!r} contains a NUL character")
        tensors[name] = _as_codable_array(name, value)
    return tensors


def _as_codable_array(name: str, value: object) -> np.ndarray:
    """float32 or int32, C-contiguous, at least 1-D; rejects NaN/inf."""
    array = _to_numpy(name, value)
    if array.ndim == 0:
        array = array.reshape(1)
    kind = array.dtype.kind
    if kind == "f" or array.dtype.name == "bfloat16":
        with np.errstate(over="ignore"):
            converted = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(converted).all():
            bad = (
                "NaN or infinity"
                if not np.isfinite(array.astype(np.float64)).all()
                else "values beyond the float32 range"
            )
            raise ValueError(f"tensor {name!r} contains {bad}")
        return converted
    if kind == "b":
        return np.ascontiguousarray(array, dtype=np.int32)
    if kind in "iu":
        # -2**31 is excluded: its magnitude does not fit the int32 level coder.
        if array.size and (
            int(array.min()) < -_INT32_MAX or int(array.max()) > _INT32_MAX
        ):
            raise ValueError(
                f"integer tensor {name!r} ({array.dtype}) has values in "
                f"[{int(array.min())}, {int(array.max())}], outside the codable "
                f"range [{-_INT32_MAX}, {_INT32_MAX}]"
            )
        return np.ascontiguousarray(array, dtype=np.int32)
    raise TypeError(f"tensor {name!r} has unsupported dtype {array.dtype}")


def _to_numpy(name: str, value: object) -> np.ndarray:
    module = type(value).__module__ or ""
    if module.startswith("torch") and hasattr(value, "detach"):
        tensor = value.detach().cpu()  # type: ignore[attr-defined]
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


def _quantize_tensor(name: str, array: np.ndarray, opts: EncodeOptions) -> _CodedTensor:
    dims = tuple(int(d) for d in array.shape)
    flat = array.reshape(-1)
    if array.dtype == np.int32:
        return _CodedTensor(hls.PT_INT, dims, flat)

    is_weight = array.ndim > 1
    if opts.bitdepth is not None:
        bits = opts.bitdepth if (opts.bitdepth > 7 or is_weight) else 8
        qp = _bitdepth_qp(flat, bits, opts.qp_density)
    else:
        bits = None
        qp = opts.qp if is_weight else opts.effective_nonweight_qp

    if opts.approx_method == "codebook":
        return _quantize_codebook(name, flat, dims, qp, bits, opts)
    qp = _overflow_safe_qp(name, flat, qp, opts.qp_density, opts.use_dq)
    q = _core.quantize(flat, qp, opts.qp_density, opts.use_dq, opts.lambda_scale)
    if bits is not None:
        q = (_clip_dq_to_bitdepth if opts.use_dq else _clip_to_bitdepth)(q, flat, bits)
    return _CodedTensor(hls.PT_FLOAT, dims, q, qp, opts.qp_density, opts.use_dq)


def _overflow_safe_qp(
    name: str, flat: np.ndarray, qp: int, qp_density: int, dq: bool
) -> int:
    """qp, raised as NNCodec does when max|x| / step overflows int32 (§2.2)."""
    if flat.size == 0:
        return qp
    max_abs = np.float32(np.max(np.abs(flat)))
    inverse_step = np.float32(1) / np.float32(_core.step_size(qp, qp_density))
    with np.errstate(over="ignore"):
        scaled = float(max_abs * inverse_step)  # float32 product, as NNCodec
    limit = _OVERFLOW_LIMIT_DQ if dq else _OVERFLOW_LIMIT_URQ
    if not math.isfinite(scaled) or math.floor(scaled + 0.5) > limit:
        qp = _nncodec_overflow_qp(max_abs, qp_density)
    low, high = qp_range(qp_density)
    while qp <= high and float(max_abs) / _core.step_size(qp, qp_density) > (
        _CORE_SCALED_LIMIT
    ):
        qp += 1
    if not low <= qp <= high:
        raise ValueError(
            f"tensor {name!r}: max|x| = {float(max_abs):g} needs qp {qp}, outside "
            f"the codable range {low}..{high}"
        )
    return qp


def _nncodec_overflow_qp(max_abs: np.float32, qp_density: int) -> int:
    """Smallest qp whose step keeps max|x| within int32, NNCodec's formula."""
    k = 1 << qp_density
    min_step = float(max_abs) / float((1 << 31) - 3)
    base_qp = np.float32(math.floor(math.log2(min_step)) * k)
    exponent = float(np.float32(base_qp / np.float32(k)))
    new_qp = np.float32(float(base_qp) + ((min_step * k) / 2.0**exponent - k))
    return int(math.ceil(float(new_qp)))


def _bitdepth_qp(flat: np.ndarray, bits: int, qp_density: int) -> int:
    """Per-tensor qp of the integer bit-depth mode (§2.4), NNCodec's rule."""
    if flat.size == 0 or not np.any(flat):
        return 0
    magnitudes = np.abs(flat).astype(np.float64)
    unsigned = not np.any(flat < 0)
    denominator = 2**bits - 1 if unsigned else 2 ** (bits - 1) - 1
    step = np.percentile(magnitudes, _BITDEPTH_PERCENTILE) / denominator
    if step == 0:
        step = np.max(magnitudes) / denominator
    k = 1 << qp_density
    base_qp = np.floor(np.log2(step)) * k
    qp = base_qp + (step * k / 2 ** (base_qp / k) - k)
    low, high = qp_range(qp_density)
    return int(np.round(np.clip(qp, low, high)))


def _bitdepth_bounds(flat: np.ndarray, bits: int) -> tuple[int, int]:
    """Integer range of the bit-depth mode: unsigned if no value is negative."""
    if not np.any(flat < 0):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _clip_to_bitdepth(q: np.ndarray, flat: np.ndarray, bits: int) -> np.ndarray:
    low, high = _bitdepth_bounds(flat, bits)
    return np.clip(q, low, high).astype(np.int32)


# DQ state transition T[s][k & 1] (nnc-format §2.3).
_DQ_NEXT_STATE = ((0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6))


def _dq_level(q: int, state: int) -> int:
    """Level k coded for reconstruction index q in DQ state ``state``."""
    sign = (q > 0) - (q < 0)
    return (q + sign * (state & 1)) >> 1


def _dq_admissible(q: int, state: int) -> bool:
    return q == 0 or (q & 1) == (state & 1)


def _clip_dq_to_bitdepth(q: np.ndarray, flat: np.ndarray, bits: int) -> np.ndarray:
    """Clip DQ indices to the bit-depth range without breaking the trellis.

    NNCodec clips after the trellis, which can leave an index of the wrong
    parity for its state (the stream then decodes to other values). Here a
    clipped index is moved to the nearest in-range index that is admissible
    in its state and has the same level parity, so every later state, and
    thus every later index, stays valid.
    """
    low, high = _bitdepth_bounds(flat, bits)
    clipped = np.clip(q, low, high).astype(np.int32)
    changed = np.flatnonzero(clipped != q)
    if changed.size == 0:
        return clipped
    original = q.tolist()
    out = clipped.tolist()
    first, last = int(changed[0]), int(changed[-1])
    state = 0
    for position in range(first):
        state = _DQ_NEXT_STATE[state][_dq_level(original[position], state) & 1]
    for position in range(first, last + 1):
        parity = _dq_level(original[position], state) & 1
        if out[position] != original[position]:
            out[position] = _nearest_admissible(out[position], state, parity, low, high)
        state = _DQ_NEXT_STATE[state][parity]
    return np.asarray(out, dtype=np.int32)


def _nearest_admissible(
    target: int, state: int, parity: int, low: int, high: int
) -> int:
    """In-range q nearest ``target``, admissible in ``state``, given level parity."""
    for distance in range(0, 8):
        for candidate in (target - distance, target + distance):
            if (
                low <= candidate <= high
                and _dq_admissible(candidate, state)
                and _dq_level(candidate, state) & 1 == parity
            ):
                return candidate
    raise ValueError(f"no admissible DQ index near {target} in {low}..{high}")


def _quantize_codebook(
    name: str,
    flat: np.ndarray,
    dims: tuple[int, ...],
    qp: int,
    bits: int | None,
    opts: EncodeOptions,
) -> _CodedTensor:
    """approx_method="codebook" (NNCodec's codebook_mode 2, §2.5).

    URQ at qp - 2**qp_density when DQ was asked for (NNCodec's DQ-equivalent
    step), unique values as the codebook; kept only if the codebook stream is
    smaller than the uniform one. The zero offset is chosen by trial
    encoding (every offset for small codebooks, else the entries around 0
    and around the most frequent value).
    """
    uniform = _quantize_uniform_fallback(name, flat, dims, qp, bits, opts)
    if flat.size == 0:
        return uniform
    cb_qp = qp - (1 << opts.qp_density) if opts.use_dq else qp
    low, _ = qp_range(opts.qp_density)
    if cb_qp < low:
        return uniform
    cb_qp = _overflow_safe_qp(name, flat, cb_qp, opts.qp_density, False)
    q = _core.quantize(flat, cb_qp, opts.qp_density, False, opts.lambda_scale)
    if bits is not None:
        q = _clip_to_bitdepth(q, flat, bits)
    values, indices = np.unique(q, return_inverse=True)
    indices = indices.astype(np.int32).reshape(-1)
    height, width = _matrix_shape(dims)

    best: tuple[int, bytes, hls.Codebook] | None = None
    for zero in _codebook_zero_candidates(values, indices):
        codebook = _best_egk_codebook(values, zero)
        segment = _core.encode_segment(
            indices,
            height,
            width,
            qp=cb_qp,
            qp_density=opts.qp_density,
            dq=False,
            hdsp_flag_present=opts.compress_differences,
            row_skipping=opts.row_skipping,
            param_opt=opts.param_opt,
            codebook_size=len(values),
            codebook_zero_offset=zero,
            unary_len=CABAC_UNARY_LENGTH_MINUS1 + 1,
        )
        cost_bits = 8 * len(segment) + hls.codebook_num_bits(codebook)
        if best is None or cost_bits < best[0]:
            best = (cost_bits, segment, codebook)
    assert best is not None

    uniform_segment = _core.encode_segment(
        uniform.values,
        height,
        width,
        qp=uniform.qp,
        qp_density=opts.qp_density,
        dq=uniform.dq,
        hdsp_flag_present=opts.compress_differences,
        row_skipping=opts.row_skipping,
        param_opt=opts.param_opt,
        unary_len=CABAC_UNARY_LENGTH_MINUS1 + 1,
    )
    if best[0] >= 8 * len(uniform_segment):
        return uniform
    return _CodedTensor(
        hls.PT_FLOAT, dims, indices, cb_qp, opts.qp_density, False, codebook=best[2]
    )


def _quantize_uniform_fallback(
    name: str,
    flat: np.ndarray,
    dims: tuple[int, ...],
    qp: int,
    bits: int | None,
    opts: EncodeOptions,
) -> _CodedTensor:
    qp = _overflow_safe_qp(name, flat, qp, opts.qp_density, opts.use_dq)
    q = _core.quantize(flat, qp, opts.qp_density, opts.use_dq, opts.lambda_scale)
    if bits is not None:
        q = (_clip_dq_to_bitdepth if opts.use_dq else _clip_to_bitdepth)(q, flat, bits)
    return _CodedTensor(hls.PT_FLOAT, dims, q, qp, opts.qp_density, opts.use_dq)


def _codebook_zero_candidates(values: np.ndarray, indices: np.ndarray) -> list[int]:
    size = len(values)
    if size <= _CODEBOOK_FULL_SEARCH_SIZE:
        return list(range(size))
    nearest_zero = int(np.argmin(np.abs(values.astype(np.int64))))
    most_frequent = int(np.argmax(np.bincount(indices, minlength=size)))
    candidates = set()
    for centre in (nearest_zero, most_frequent):
        for offset in (centre - 1, centre, centre + 1):
            if 0 <= offset < size:
                candidates.add(offset)
    return sorted(candidates)


def _best_egk_codebook(values: np.ndarray, zero: int) -> hls.Codebook:
    entries = tuple(int(v) for v in values)
    options = [hls.Codebook(egk, zero, entries) for egk in _CODEBOOK_EGK_CHOICES]
    return min(options, key=hls.codebook_num_bits)


def _matrix_shape(dims: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of the coding matrix: shape[0] x product(shape[1:])."""
    return dims[0], math.prod(dims[1:])


def _ndu_header(
    name: str, coded: _CodedTensor, parameter_id: int, opts: EncodeOptions
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
        cabac_unary_length_minus1=CABAC_UNARY_LENGTH_MINUS1,
    )


def _tca_base_for(
    name: str, header: hls.NDUHeader, base: BaseState | None, coded: _CodedTensor
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
    coded: _CodedTensor,
    opts: EncodeOptions,
    header: hls.NDUHeader,
    tca_base: np.ndarray | None,
) -> bytes:
    height, width = _matrix_shape(coded.dims)
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
        unary_len=CABAC_UNARY_LENGTH_MINUS1 + 1,
    )


def _reconstruct_encoded(coded: _CodedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, base levels) of a quantised tensor, both flat."""
    if coded.payload_type == hls.PT_INT:
        return coded.values, coded.values
    assert coded.qp is not None
    if coded.codebook is not None:
        return _reconstruct_codebook(
            coded.values, coded.codebook, coded.qp, coded.qp_density
        )
    return _core.dequantize(coded.values, coded.qp, coded.qp_density), coded.values


def _reconstruct_codebook(
    indices: np.ndarray, codebook: hls.Codebook, qp: int, qp_density: int
) -> tuple[np.ndarray, np.ndarray]:
    """(codebook[index] * step, index - zero offset), both flat."""
    entries = np.asarray(codebook.values, dtype=np.int64)
    values = np.ascontiguousarray(entries[indices], dtype=np.int32)
    levels = (indices.astype(np.int64) - codebook.zero_offset).astype(np.int32)
    return _core.dequantize(values, qp, qp_density), levels


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
    max_elements : int
        Largest tensor (in elements) the decoder will allocate.

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
    data = _as_bytes(bitstream)
    if update_base and base is None:
        raise ValueError("update_base=True needs a base (BaseState)")
    if base is not None and not isinstance(base, BaseState):
        raise TypeError(f"base must be a BaseState or None, got {type(base).__name__}")
    parsed = hls.parse_stream(data, max_elements=max_elements)
    work_base = base.copy() if (update_base and base is not None) else base
    tensors: dict[str, np.ndarray] = {}
    for unit in parsed.ndus:
        header: hls.NDUHeader = unit.header  # type: ignore[assignment]
        values, levels = _decode_ndu(data, unit, header, parsed.mps, work_base)
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


def decode_tensor(bitstream: bytes, **kwargs: object) -> np.ndarray:
    """Decode a stream holding exactly one tensor and return that tensor."""
    tensors = decode(bitstream, **kwargs)  # type: ignore[arg-type]
    if len(tensors) != 1:
        raise ValueError(
            f"decode_tensor expects a stream with one tensor, found {len(tensors)}"
            f" ({', '.join(map(repr, tensors))})"
        )
    return next(iter(tensors.values()))


def _as_bytes(bitstream: object) -> bytes:
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


def _decode_ndu(
    data: bytes,
    unit: hls.ParsedUnit,
    header: hls.NDUHeader,
    mps: hls.ModelParameterSet,
    base: BaseState | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(decoded array, base levels or None for RAW_FLOAT) of one NDU."""
    payload = data[unit.payload_offset : unit.offset + unit.size]
    if header.payload_type == hls.PT_RAW_FLOAT:
        raw = np.frombuffer(payload, dtype="<f4").astype(np.float32)
        return raw.reshape(header.dims), None

    tca_base = _tca_base_for_decode(unit, header, base)
    codebook = header.codebook
    height, width = _matrix_shape(header.dims)
    is_float = header.payload_type == hls.PT_FLOAT
    try:
        q, segment_qp, consumed = _core.decode_segment(
            np.frombuffer(payload, dtype=np.uint8),
            height,
            width,
            has_qp=is_float,
            qp_density=mps.qp_density,
            dq=bool(header.dq_flag),
            hdsp_flag_present=bool(header.parent_node_id_present_flag),
            tca_base=tca_base,
            codebook_size=0 if codebook is None else len(codebook.values),
            codebook_zero_offset=0 if codebook is None else codebook.zero_offset,
            unary_len=header.cabac_unary_length_minus1 + 1,
        )
    except (ValueError, IndexError, OverflowError, MemoryError) as exc:
        raise NNCFormatError(
            f"CABAC segment starting at byte {unit.payload_offset}: {exc}",
            unit=unit.label,
            offset=unit.payload_offset,
        ) from None
    if consumed != len(payload):
        raise NNCFormatError(
            f"CABAC segment ends after {consumed} bytes but the unit holds "
            f"{len(payload)} payload bytes",
            unit=unit.label,
            offset=unit.payload_offset + consumed,
        )
    if not is_float:
        return q.reshape(header.dims), q.reshape(header.dims)

    qp = int(segment_qp) + mps.quantization_parameter
    step = _core.step_size(qp, mps.qp_density) if -4096 < qp < 4096 else 0.0
    if not (step > 0.0 and math.isfinite(step)):
        raise NNCFormatError(
            f"qp {qp} gives a step size outside the float32 range",
            unit=unit.label,
            offset=unit.payload_offset,
        )
    if codebook is not None:
        recon, levels = _reconstruct_codebook(q, codebook, qp, mps.qp_density)
    else:
        recon, levels = _core.dequantize(q, qp, mps.qp_density), q
    return recon.reshape(header.dims), levels.reshape(header.dims)


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


# --------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------


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
    data = _as_bytes(bitstream)
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
        "header_size": unit.payload_offset - unit.offset,
        "payload_size": unit.payload_size,
    }


def _peek_qp_offset(segment: bytes, num_bins: int) -> int | None:
    """The qp offset: the first ``num_bins`` bypass bins of a CABAC segment.

    Bypass decoding at the initial range 510 (§3.6): offset = 2*offset +
    next bit, bin = 1 (and offset -= range) when offset >= range. Returns
    None when the segment is too short.
    """
    bits_needed = 9 + num_bins
    if 8 * len(segment) < bits_needed:
        return None
    window = int.from_bytes(segment[: (bits_needed + 7) // 8], "big")
    total_bits = 8 * ((bits_needed + 7) // 8)

    def bit(position: int) -> int:
        return (window >> (total_bits - 1 - position)) & 1

    value = 0
    for position in range(9):
        value = 2 * value + bit(position)
    code_range, result = 510, 0
    for position in range(9, bits_needed):
        value = 2 * value + bit(position)
        result <<= 1
        if value >= 2 * code_range:
            raise AssertionError("bypass offset out of range")
        if value >= code_range:
            result |= 1
            value -= code_range
    if result >= 1 << (num_bins - 1):
        result -= 1 << num_bins
    return result
