"""Sparsification of model updates before coding (nnc-format §5.4).

Same rules and names as NNCodec's ``apply_unstruct_spars_v2`` (target
sparsity, statistics-based thresholds searched with a growing multiple of
the standard deviation) and ``apply_struct_spars_v2`` (zero whole output
channels whose mean magnitude is below a gain times the average), computed
with numpy on sorted magnitudes instead of repeated deep copies.

Only float tensors with ndim >= 2 that are not all zero and whose name does
not contain ``.weight_scaling`` are changed; every tensor, 1-D ones
included, counts toward the global sparsity. Thresholds are compared in
float32, as NNCodec does under numpy 1.x.
"""

from __future__ import annotations

import numpy as np

__all__ = ["global_sparsity", "sparsify_structured", "sparsify_unstructured"]

MAX_SEARCH_ITERATIONS = 501
_INITIAL_DELTA = 0.25
_INITIAL_DELTA_STEP = 0.2


def global_sparsity(params: dict[str, np.ndarray]) -> float:
    """Fraction of zero elements over all tensors (0 for no elements)."""
    total = sum(int(w.size) for w in params.values())
    if total == 0:
        return 0.0
    zeros = sum(int(w.size - np.count_nonzero(w)) for w in params.values())
    return zeros / total


def _is_eligible(name: str, w: np.ndarray) -> bool:
    return (
        w.ndim >= 2
        and w.dtype.kind == "f"
        and ".weight_scaling" not in name
        and bool(np.any(w))
    )


def sparsify_unstructured(
    params: dict[str, np.ndarray], qp: int, qp_density: int, target: float
) -> dict[str, np.ndarray]:
    """Zero small elements until the global sparsity reaches ``target``.

    Step 1 zeroes every eligible element with ``|w| < step(qp)/2``. If the
    global sparsity is still below ``target``, thresholds
    ``max(|mu - d*sigma|, |mu + d*sigma|)`` (floored at step/2, mu and sigma
    of each step-1 tensor) are tried for growing d, exactly in NNCodec's
    order of increments, for at most 501 iterations. Returns a new dict;
    unchanged tensors are passed through without copying.
    """
    half_step = np.float32(_step_size(qp, qp_density) / 2)
    stage1 = {
        name: _zero_below(w, half_step) if _is_eligible(name, w) else w
        for name, w in params.items()
    }
    if target <= 0.0:
        return stage1

    total = sum(int(w.size) for w in stage1.values())
    eligible = {name: w for name, w in stage1.items() if _is_eligible(name, w)}
    fixed_zeros = sum(
        int(w.size - np.count_nonzero(w))
        for name, w in stage1.items()
        if name not in eligible
    )
    stats = {
        name: (
            np.sort(np.abs(w), axis=None),
            np.float64(np.mean(w)),
            np.float64(np.std(w)),
        )
        for name, w in eligible.items()
    }

    def thresholds(delta: float) -> dict[str, np.float32]:
        out = {}
        for name, (_, mean, std) in stats.items():
            spread = np.float64(delta) * std
            t = max(abs(mean - spread), abs(mean + spread))
            out[name] = half_step if t < np.float64(half_step) else np.float32(t)
        return out

    def sparsity_at(current: dict[str, np.float32] | None) -> float:
        if total == 0:
            return 0.0
        zeros = fixed_zeros
        for name, (sorted_abs, _, _) in stats.items():
            t = half_step if current is None else current[name]
            zeros += int(np.searchsorted(sorted_abs, t, side="left"))
        return zeros / total

    chosen: dict[str, np.float32] | None = None
    delta, delta_step = _INITIAL_DELTA, _INITIAL_DELTA_STEP
    for _ in range(MAX_SEARCH_ITERATIONS):
        sparsity = sparsity_at(chosen)
        if sparsity >= target:
            break
        gap = target - sparsity
        if gap < 0.05:
            delta_step = 0.01
        elif gap < 0.10:
            delta_step = 0.05
        elif gap < 0.30:
            delta_step = 0.10
        delta += delta_step
        chosen = thresholds(delta)
    if chosen is None:
        return stage1
    return {
        name: _zero_below(w, chosen[name]) if name in chosen else w
        for name, w in stage1.items()
    }


def sparsify_structured(
    params: dict[str, np.ndarray], gain: float
) -> dict[str, np.ndarray]:
    """Zero the output channels (index 0) with a small mean magnitude.

    For each eligible tensor, p = the fraction of channels whose mean |w| is
    below ``gain`` times the mean of all channel means; the floor(p * C)
    channels with the smallest means are zeroed. Returns a new dict.
    """
    out = {}
    for name, w in params.items():
        if not _is_eligible(name, w):
            out[name] = w
            continue
        channels = w.shape[0]
        channel_means = np.abs(w).reshape(channels, -1).mean(axis=1)
        threshold = np.float32(np.float64(np.mean(channel_means)) * gain)
        fraction = int(np.count_nonzero(channel_means < threshold)) / channels
        num_zeroed = int(fraction * channels)
        order = np.argsort(channel_means, kind="stable")
        sparse = w.copy()
        sparse[order[:num_zeroed]] = 0
        out[name] = sparse
    return out


def _zero_below(w: np.ndarray, threshold: np.float32) -> np.ndarray:
    """Copy of ``w`` with every element of magnitude below ``threshold`` zeroed."""
    return np.where(np.abs(w) < threshold, np.zeros((), dtype=w.dtype), w)


def _step_size(qp: int, qp_density: int) -> float:
    """Δ(qp) of nnc-format §2.1 (exact in float32)."""
    k = 1 << qp_density
    return float((k + (qp & (k - 1))) * 2.0 ** ((qp >> qp_density) - qp_density))
