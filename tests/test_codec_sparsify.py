"""Sparsification options (nnc-format §5.4) against NNCodec's results."""

from __future__ import annotations

import numpy as np
import pytest

import flwr_nncodec as nnc
from flwr_nncodec.sparsify import (
    global_sparsity,
    sparsify_structured,
    sparsify_unstructured,
)

# Zero counts NNCodec 2.1.3 produced (apply_unstruct_spars_v2 at qp -38, then
# apply_struct_spars_v2 when gain > 0) for the inputs of make_update(4) in
# this order of cases.
NNCODEC_CASES = [
    # (target sparsity, gain, zeros in conv.weight, zeros in fc.weight)
    (0.5, 0.9, 207, 1438),
    (0.9, 0.0, 390, 1858),
    (0.97, 0.5, 432, 1991),
    (0.2, 1.1, 326, 1629),
]


def make_updates(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "conv.weight": (rng.normal(size=(16, 3, 3, 3)) * 0.01).astype(np.float32),
            "fc.weight": (rng.standard_t(3, size=(40, 50)) * 0.003).astype(np.float32),
            "fc.bias": (rng.normal(size=50) * 0.01).astype(np.float32),
            "x.weight_scaling": (rng.normal(size=(4, 4)) * 0.01).astype(np.float32),
            "z": np.zeros((5, 5), np.float32),
        }
        for _ in range(count)
    ]


def zeros(array: np.ndarray) -> int:
    return int(array.size - np.count_nonzero(array))


@pytest.mark.parametrize("case", range(len(NNCODEC_CASES)))
def test_sparsification_matches_nncodec_zero_counts(case):
    target, gain, conv_zeros, fc_zeros = NNCODEC_CASES[case]
    update = make_updates(4, len(NNCODEC_CASES))[case]

    sparse = sparsify_unstructured(update, qp=-38, qp_density=2, target=target)
    if gain > 0:
        sparse = sparsify_structured(sparse, gain)

    assert zeros(sparse["conv.weight"]) == conv_zeros
    assert zeros(sparse["fc.weight"]) == fc_zeros
    for untouched in ("fc.bias", "x.weight_scaling"):  # 1-D / weight scaling
        assert np.array_equal(sparse[untouched], update[untouched])
    assert global_sparsity(sparse) >= min(target, 0.78)


def reference_unstructured(params, step, target):
    """NNCodec's rule written out literally: a full pass per iteration."""

    def eligible(name, w):
        return w.ndim >= 2 and w.any() and ".weight_scaling" not in name

    def sparsity(d):
        return sum(zeros(v) for v in d.values()) / sum(v.size for v in d.values())

    def threshold_pass(d, delta):
        out = {}
        for name, w in d.items():
            if not eligible(name, w):
                out[name] = w
                continue
            if delta is None:
                t = step / 2
            else:
                mu, sd = float(np.mean(w)), float(np.std(w))
                t = max(abs(mu - delta * sd), abs(mu + delta * sd), step / 2)
            t32 = np.float32(t)
            out[name] = np.where((w >= t32) | (w <= -t32), w, np.float32(0))
        return out

    stage1 = threshold_pass(params, None)
    current, delta, increment = stage1, 0.25, 0.2
    for _ in range(501):
        if sparsity(current) >= target:
            break
        gap = target - sparsity(current)
        increment = (
            0.01
            if gap < 0.05
            else 0.05
            if gap < 0.10
            else 0.10
            if gap < 0.30
            else increment
        )
        delta += increment
        current = threshold_pass(stage1, delta)
    return current


@pytest.mark.parametrize("target", [0.0, 0.3, 0.8, 0.95, 1.0])
def test_unstructured_rule_equals_the_literal_algorithm(target):
    update = make_updates(9, 1)[0]
    step = 1.5 * 2.0**-10  # qp -38
    expected = reference_unstructured(update, step, target)
    actual = sparsify_unstructured(update, qp=-38, qp_density=2, target=target)
    for name in update:
        assert np.array_equal(actual[name], expected[name]), name


def test_structured_rule_zeroes_exactly_the_weak_channels():
    w = np.ones((6, 4), np.float32)
    w[1] *= 0.1
    w[4] *= 0.2
    w[5] *= 0.85  # mean of channel means = (4 + 0.1 + 0.2 + 0.85) / 6 = 0.858
    sparse = sparsify_structured({"w": w}, gain=0.9)["w"]  # threshold 0.7725
    assert [bool(row.any()) for row in sparse] == [True, False, True, True, False, True]
    assert np.array_equal(sparse[0], w[0])


def test_encoder_options_sparsify_before_coding():
    update = make_updates(4, 1)[0]
    # URQ keeps zeros zero (the DQ trellis may not), so zero counts carry over.
    dense = nnc.encode_with_reconstruction(update, qp=-38, use_dq=False)
    sparse = nnc.encode_with_reconstruction(
        update, qp=-38, use_dq=False, sparsity=0.5, struct_spars_factor=0.9
    )

    assert zeros(sparse.reconstruction["conv.weight"]) >= 207
    assert zeros(sparse.reconstruction["fc.weight"]) >= 1438
    assert len(sparse.bitstream) < len(dense.bitstream)
    assert np.array_equal(
        nnc.decode(sparse.bitstream)["fc.bias"], dense.reconstruction["fc.bias"]
    )
