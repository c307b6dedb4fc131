"""qp choice, bit-depth clipping under DQ, and the DQ state scan."""

from __future__ import annotations

import numpy as np
import pytest

from flwr_nncodec import _core
from flwr_nncodec.quantization import (
    bitdepth_qp,
    clip_dq_levels,
    dq_states,
    overflow_safe_qp,
)

NEXT_STATE = ((0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6))


def states_one_by_one(q: np.ndarray) -> list[int]:
    """DQ states by the rule of nnc-format §2.3, one position at a time."""
    state, states = 0, []
    for value in q.tolist():
        states.append(state)
        sign = (value > 0) - (value < 0)
        level = (value + sign * (state & 1)) >> 1
        state = NEXT_STATE[state][level & 1]
    return states


def assert_admissible(q: np.ndarray) -> None:
    for value, state in zip(q.tolist(), states_one_by_one(q), strict=True):
        assert value == 0 or (value & 1) == (state & 1), (value, state)


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 999, 4097])
def test_dq_state_scan_equals_the_sequential_rule(n):
    x = (np.random.default_rng(n).normal(size=n) * 4).astype(np.float32)
    q = _core.quantize(x, -4, 2, True, 0.0)
    assert dq_states(q).tolist() == states_one_by_one(q)


def test_clipping_dq_indices_keeps_every_index_admissible():
    x = np.random.default_rng(1).standard_t(2, size=5000).astype(np.float32)
    q = _core.quantize(x, -12, 2, True, 0.0)
    naive = np.clip(q, -8, 7)
    broken = [
        v != 0 and (v & 1) != (s & 1)
        for v, s in zip(naive.tolist(), states_one_by_one(naive), strict=True)
    ]
    assert any(broken)  # NNCodec's plain clip leaves inadmissible indices

    clipped = clip_dq_levels(q, -8, 7)
    assert clipped.min() >= -8 and clipped.max() <= 7
    assert_admissible(clipped)
    unchanged = (q >= -8) & (q <= 7)
    assert np.array_equal(clipped[unchanged], q[unchanged])
    assert np.all(np.abs(clipped[~unchanged] - naive[~unchanged]) <= 3)


def test_overflow_guard_follows_nncodecs_formula():
    x = np.array([1e8, -1.0], dtype=np.float32)
    assert overflow_safe_qp("w", x, -32, 2, dq=True) == -18
    assert overflow_safe_qp("w", x, -10, 2, dq=True) == -10  # already fits
    assert overflow_safe_qp("w", np.zeros(0, np.float32), -32, 2, dq=False) == -32
    with pytest.raises(ValueError, match="'w': max\\|x\\| = 3e\\+38 needs qp"):
        overflow_safe_qp("w", np.array([3e38], np.float32), -32, 2, dq=False)


def test_bitdepth_qp_maps_the_percentile_to_the_largest_integer():
    signed = np.linspace(-1, 1, 10001, dtype=np.float32)
    # P99.95(|x|) = 0.9999 over 127 levels -> step 0.00787 -> qp -28 (2**-7)
    assert bitdepth_qp(signed, 8, 2) == -28
    assert bitdepth_qp(np.abs(signed), 8, 2) == -32  # unsigned: 255 levels
    assert bitdepth_qp(np.zeros(5, np.float32), 8, 2) == 0
    assert bitdepth_qp(np.full(4, 1e30, np.float32), 4, 2) == 127  # clipped
