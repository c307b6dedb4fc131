"""From one input tensor to the integers an NDU codes (nnc-format §2).

Chooses the qp (weights, non-weights, NNCodec's int32 overflow guard, the
bit-depth mode of §2.4), quantises through the C++ core (URQ or the DQ
trellis), applies bit-depth clipping without breaking the DQ trellis, and
implements NNCodec's codebook mode (§2.5). Nothing here writes syntax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flwr_nncodec import _core, hls
from flwr_nncodec.options import EncodeOptions, qp_range

__all__ = [
    "CodedTensor",
    "base_levels",
    "dq_states",
    "matrix_shape",
    "plan_uniform",
    "quantize_tensor",
    "reconstruct",
]

# NNCodec's int32 overflow check: |round(x / step)| must stay below these (§2.2).
_OVERFLOW_LIMIT_DQ = (1 << 31) - 3
_OVERFLOW_LIMIT_URQ = (1 << 31) - 1
# The core refuses max|x| / step above this (its DQ trellis looks 2 steps out).
_CORE_SCALED_LIMIT = 2147483647.0 - 4.0
_BITDEPTH_PERCENTILE = 99.95
_CODEBOOK_EGK_CHOICES = range(16)
_CODEBOOK_FULL_SEARCH_SIZE = 16
# DQ state transition T[s][k & 1] (nnc-format §2.3).
_DQ_NEXT_STATE = np.array(
    [[0, 2], [7, 5], [1, 3], [6, 4], [2, 0], [5, 7], [3, 1], [4, 6]], dtype=np.uint8
)


@dataclass
class CodedTensor:
    """One tensor after quantisation, ready for its NDU."""

    payload_type: int  # hls.PT_FLOAT or hls.PT_INT
    dims: tuple[int, ...]
    values: np.ndarray  # int32[n]: q, INT values, or codebook indices (float32
    # input until coded, for tensors planned by plan_uniform)
    qp: int | None = None
    qp_density: int = 2
    dq: bool = False
    codebook: hls.Codebook | None = None


def matrix_shape(dims: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of the coding matrix: shape[0] x product(shape[1:])."""
    return dims[0], math.prod(dims[1:])


def quantize_tensor(name: str, array: np.ndarray, opts: EncodeOptions) -> CodedTensor:
    """Quantise a float32 or int32 array (at least 1-D) as NNCodec would.

    int32 arrays become NNR_PT_INT payloads unchanged. Float arrays with
    ndim > 1 use ``qp``, the others the non-weight qp; in bit-depth mode the
    qp comes from the tensor's statistics instead.
    """
    dims = tuple(int(d) for d in array.shape)
    flat = array.reshape(-1)
    if array.dtype == np.int32:
        return CodedTensor(hls.PT_INT, dims, flat)

    is_weight = array.ndim > 1
    bits = None
    if opts.bitdepth is not None:
        bits = opts.bitdepth if (opts.bitdepth > 7 or is_weight) else 8
        qp = bitdepth_qp(flat, bits, opts.qp_density)
    else:
        qp = opts.qp if is_weight else opts.effective_nonweight_qp

    uniform = _quantize_uniform(name, flat, dims, qp, bits, opts)
    if opts.approx_method == "codebook" and flat.size:
        return _prefer_codebook(name, flat, uniform, bits, opts)
    return uniform


def plan_uniform(
    name: str, array: np.ndarray, opts: EncodeOptions, max_abs: float | None = None
) -> CodedTensor:
    """A float32 tensor's uniform (URQ/DQ) plan without bit depth: the qp
    (non-weight qp for ndim <= 1, raised by the overflow guard) and the flat
    input in ``values``, for ``_core.encode_tensors`` to quantise and code.
    ``max_abs`` is max|x| if the caller already knows it.
    """
    dims = tuple(int(d) for d in array.shape)
    flat = array.reshape(-1)
    qp = opts.qp if array.ndim > 1 else opts.effective_nonweight_qp
    qp = overflow_safe_qp(name, flat, qp, opts.qp_density, opts.use_dq, max_abs)
    return CodedTensor(hls.PT_FLOAT, dims, flat, qp, opts.qp_density, opts.use_dq)


def base_levels(coded: CodedTensor) -> np.ndarray:
    """The flat integers a BaseState keeps for a coded tensor (see reconstruct)."""
    if coded.payload_type == hls.PT_INT:
        return coded.values.copy()  # may be a view of the caller's array
    if coded.codebook is not None:
        offset = coded.codebook.zero_offset
        return (coded.values.astype(np.int64) - offset).astype(np.int32)
    return coded.values


def reconstruct(coded: CodedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(decoder output, base levels) of a quantised tensor, both flat.

    The base levels are what NNCodec keeps as the TCA base: q for uniform
    and INT tensors, codebook index minus the zero offset for codebooks.
    """
    if coded.payload_type == hls.PT_INT:
        values = coded.values.copy()  # may be a view of the caller's array
        return values, values
    assert coded.qp is not None
    if coded.codebook is not None:
        return reconstruct_codebook(
            coded.values, coded.codebook, coded.qp, coded.qp_density
        )
    return _core.dequantize(coded.values, coded.qp, coded.qp_density), coded.values


def reconstruct_codebook(
    indices: np.ndarray, codebook: hls.Codebook, qp: int, qp_density: int
) -> tuple[np.ndarray, np.ndarray]:
    """(codebook[index] * step, index - zero offset), both flat."""
    entries = np.asarray(codebook.values, dtype=np.int64)
    values = np.ascontiguousarray(entries[indices], dtype=np.int32)
    levels = (indices.astype(np.int64) - codebook.zero_offset).astype(np.int32)
    return _core.dequantize(values, qp, qp_density), levels


def _quantize_uniform(
    name: str,
    flat: np.ndarray,
    dims: tuple[int, ...],
    qp: int,
    bits: int | None,
    opts: EncodeOptions,
) -> CodedTensor:
    qp = overflow_safe_qp(name, flat, qp, opts.qp_density, opts.use_dq)
    q = _core.quantize(flat, qp, opts.qp_density, opts.use_dq, opts.lambda_scale)
    if bits is not None:
        low, high = bitdepth_bounds(flat, bits)
        q = clip_dq_levels(q, low, high) if opts.use_dq else clip_levels(q, low, high)
    return CodedTensor(hls.PT_FLOAT, dims, q, qp, opts.qp_density, opts.use_dq)


# --------------------------------------------------------------------------
# qp choice


def overflow_safe_qp(
    name: str,
    flat: np.ndarray,
    qp: int,
    qp_density: int,
    dq: bool,
    max_abs: float | None = None,
) -> int:
    """qp, raised as NNCodec does when max|x| / step overflows int32 (§2.2).

    ``max_abs`` (max|x| of ``flat``) saves a pass when the caller knows it.
    """
    if flat.size == 0:
        return qp
    if max_abs is None:
        max_abs = max(-float(flat.min()), float(flat.max()))
    max_abs = np.float32(max_abs)
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


def bitdepth_qp(flat: np.ndarray, bits: int, qp_density: int) -> int:
    """Per-tensor qp of the integer bit-depth mode (§2.4), NNCodec's rule.

    The step maps the 99.95th percentile of |x| to the largest signed (or,
    without negative values, unsigned) ``bits``-bit integer. Computed in
    float64 like NNCodec under numpy 1.x.
    """
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


# --------------------------------------------------------------------------
# Bit-depth clipping


def bitdepth_bounds(flat: np.ndarray, bits: int) -> tuple[int, int]:
    """Integer range of the bit-depth mode: unsigned if no value is negative."""
    if not np.any(flat < 0):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def clip_levels(q: np.ndarray, low: int, high: int) -> np.ndarray:
    return np.clip(q, low, high).astype(np.int32)


def clip_dq_levels(q: np.ndarray, low: int, high: int) -> np.ndarray:
    """Clip DQ reconstruction indices to [low, high] keeping the trellis valid.

    NNCodec clips after the trellis, which can leave an index whose parity
    its state does not admit (the stream then decodes to other values).
    Here each clipped index moves to the nearest in-range index that its
    state admits *and* that has the same level parity, so every later state,
    and thus every later index, stays as the trellis chose it.
    """
    clipped = clip_levels(q, low, high)
    changed = np.flatnonzero(clipped != q)
    if changed.size == 0:
        return clipped

    states = dq_states(q)[changed].astype(np.int64)
    parity = _dq_level(q[changed].astype(np.int64), states) & 1
    target = clipped[changed].astype(np.int64)
    repaired = np.full(changed.size, np.iinfo(np.int64).min)
    for distance in range(8):  # each admissible class repeats every 4 indices
        for candidate in (target - distance, target + distance):
            fits = (
                (repaired == np.iinfo(np.int64).min)
                & (candidate >= low)
                & (candidate <= high)
                & ((candidate == 0) | ((candidate & 1) == (states & 1)))
                & ((_dq_level(candidate, states) & 1) == parity)
            )
            repaired[fits] = candidate[fits]
    if np.any(repaired == np.iinfo(np.int64).min):
        raise ValueError(f"no admissible DQ index in {low}..{high}")
    clipped[changed] = repaired.astype(np.int32)
    return clipped


def _dq_level(q: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Level k coded for index q in DQ state s: (q + sgn(q)*(s & 1)) >> 1."""
    return (q + np.sign(q) * (states & 1)) >> 1


def dq_states(q: np.ndarray) -> np.ndarray:
    """DQ state before each position of a valid DQ index sequence (uint8).

    The 8-state machine is run chunk-wise with numpy: first every chunk's
    state map for all 8 entry states, then the entry state of each chunk,
    then all states; about 2*sqrt(n) vectorised steps instead of n.
    """
    n = q.size
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    chunk = max(64, math.isqrt(n))
    num_chunks = -(-n // chunk)
    padded = np.zeros(num_chunks * chunk, dtype=np.int32)
    padded[:n] = q.reshape(-1)  # |q| < 2**31 - 2: q + sgn(q) cannot overflow
    # Level parity if the state is even (k = q/2) and if odd (k = (q+sgn q)/2),
    # packed as 2*even + odd; position-major so each step reads one row.
    codes = ((padded >> 1) & 1).astype(np.uint8) << 1
    codes |= (((padded + np.sign(padded)) >> 1) & 1).astype(np.uint8)
    codes = np.ascontiguousarray(codes.reshape(num_chunks, chunk).T)

    maps = np.repeat(np.arange(8, dtype=np.uint8)[:, None], num_chunks, axis=1)
    for j in range(chunk):
        maps = np.take(_DQ_STEP, (maps << 2) | codes[j])
    maps = maps.T  # [chunk index, entry state]

    entry = np.empty(num_chunks, dtype=np.uint8)
    state = 0
    for index in range(num_chunks):
        entry[index] = state
        state = int(maps[index, state])

    states = np.empty((chunk, num_chunks), dtype=np.uint8)
    current = entry
    for j in range(chunk):
        states[j] = current
        current = _DQ_STEP[(current << 2) | codes[j]]
    return np.ascontiguousarray(states.T).reshape(-1)[:n]


def _dq_step_table() -> np.ndarray:
    """Next state indexed by 4*s + 2*(parity if s even) + (parity if s odd)."""
    table = np.empty(32, dtype=np.uint8)
    for state in range(8):
        for code in range(4):
            parity = code & 1 if state & 1 else code >> 1
            table[4 * state + code] = _DQ_NEXT_STATE[state, parity]
    return table


_DQ_STEP = _dq_step_table()


# --------------------------------------------------------------------------
# Codebook mode


def _prefer_codebook(
    name: str,
    flat: np.ndarray,
    uniform: CodedTensor,
    bits: int | None,
    opts: EncodeOptions,
) -> CodedTensor:
    """approx_method="codebook" (NNCodec's codebook_mode 2, §2.5).

    URQ at qp - 2**qp_density when DQ was asked for (NNCodec's DQ-equivalent
    step), the sorted unique indices as the codebook; kept only if its
    segment plus codebook syntax is smaller than the uniform segment. The
    zero offset is chosen by trial encoding: every offset for small
    codebooks, else the entries around 0 and around the most frequent value.
    """
    assert uniform.qp is not None
    cb_qp = uniform.qp - (1 << opts.qp_density) if opts.use_dq else uniform.qp
    if cb_qp < qp_range(opts.qp_density)[0]:
        return uniform
    cb_qp = overflow_safe_qp(name, flat, cb_qp, opts.qp_density, False)
    q = _core.quantize(flat, cb_qp, opts.qp_density, False, opts.lambda_scale)
    if bits is not None:
        q = clip_levels(q, *bitdepth_bounds(flat, bits))
    values, indices = np.unique(q, return_inverse=True)
    indices = np.ascontiguousarray(indices.reshape(-1), dtype=np.int32)

    best_bits, best_codebook = None, None
    for zero in _codebook_zero_candidates(values, indices):
        codebook = _best_egk_codebook(values, zero)
        segment = _trial_segment(indices, uniform.dims, cb_qp, opts, codebook)
        cost_bits = 8 * len(segment) + hls.codebook_num_bits(codebook)
        if best_bits is None or cost_bits < best_bits:
            best_bits, best_codebook = cost_bits, codebook

    uniform_bits = 8 * len(
        _trial_segment(uniform.values, uniform.dims, uniform.qp, opts)
    )
    if best_bits is None or best_bits >= uniform_bits:
        return uniform
    return CodedTensor(
        hls.PT_FLOAT,
        uniform.dims,
        indices,
        cb_qp,
        opts.qp_density,
        False,
        codebook=best_codebook,
    )


def _trial_segment(
    values: np.ndarray,
    dims: tuple[int, ...],
    qp: int,
    opts: EncodeOptions,
    codebook: hls.Codebook | None = None,
) -> bytes:
    height, width = matrix_shape(dims)
    return _core.encode_segment(
        values,
        height,
        width,
        qp=qp,
        qp_density=opts.qp_density,
        dq=opts.use_dq and codebook is None,
        hdsp_flag_present=opts.compress_differences,
        row_skipping=opts.row_skipping,
        param_opt=opts.param_opt,
        codebook_size=0 if codebook is None else len(codebook.values),
        codebook_zero_offset=0 if codebook is None else codebook.zero_offset,
        unary_len=hls.NNCODEC_UNARY_LENGTH_MINUS1 + 1,
    )


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
