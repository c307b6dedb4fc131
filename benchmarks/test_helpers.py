"""Checks of the benchmark's own arithmetic: ``pytest benchmarks/test_helpers.py``.

Not part of the default suite (testpaths = tests); run it after changing
entropy.py or the equal-MSE interpolation in run.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from entropy import (  # noqa: E402
    DQ_NEXT_STATE,
    dq_states_and_levels,
    entropy_bits,
    levels_entropy_bytes,
)
from run import equal_mse_bytes  # noqa: E402


def _states_and_levels_by_loop(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The DQ rule of nnc-format §2.3, one parameter at a time."""
    state, states, levels = 0, [], []
    for value in q.tolist():
        sign = (value > 0) - (value < 0)
        level = (value + sign * (state & 1)) >> 1
        states.append(state)
        levels.append(level)
        state = int(DQ_NEXT_STATE[state, level & 1])
    return np.array(states), np.array(levels)


@pytest.mark.parametrize("count", [1, 2, 3, 8, 33, 4097])
def test_prefix_scan_matches_the_sequential_state_machine(count):
    rng = np.random.default_rng(count)
    q = rng.integers(-40, 41, size=count)
    q[rng.random(count) < 0.4] = 0
    states, levels = dq_states_and_levels(q)
    expected_states, expected_levels = _states_and_levels_by_loop(q)
    np.testing.assert_array_equal(states, expected_states)
    np.testing.assert_array_equal(levels, expected_levels)


def test_worked_example_a_levels():
    """Worked example A (nnc-format §1.9): the levels and states of its 6 values."""
    states, levels = dq_states_and_levels(np.array([26, -52, 0, 13, 76, -3]))
    np.testing.assert_array_equal(levels, [13, -26, 0, 7, 38, -2])
    np.testing.assert_array_equal(states, [0, 2, 1, 7, 6, 3])


def test_entropy_values():
    assert entropy_bits(np.array([0, 1, 0, 1])) == pytest.approx(4.0)
    assert entropy_bits(np.array([5, 5, 5])) == pytest.approx(0.0)
    # Given the context the symbol is certain: 0 bits.
    assert entropy_bits(
        np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1])
    ) == pytest.approx(0.0)
    # Context independent of the symbol: H(K|S) = H(K) = 1 bit each.
    assert entropy_bits(
        np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    ) == pytest.approx(4.0)
    # Per-tensor sums: two constant tensors cost nothing, together they would not.
    assert levels_entropy_bytes({"a": np.zeros(8), "b": np.ones(8)}, dq=False) == 0.0


def test_equal_mse_interpolation():
    sweep = [
        {"qp": -40, "mse": 1e-6, "bytes": 4000},
        {"qp": -36, "mse": 4e-6, "bytes": 1000},
    ]
    size, method = equal_mse_bytes(sweep, 2e-6)
    assert size == pytest.approx(2000.0)  # halfway in log MSE -> geometric mean
    assert method == "interpolated qp -36..-40"
    size, method = equal_mse_bytes(sweep, 4.000001e-6)
    assert size == 1000 and method.startswith("qp -36")
    assert equal_mse_bytes(sweep, 1e-5) == (None, "outside sweep")
    assert math.isclose(equal_mse_bytes(sweep, 1e-6)[0], 4000)
