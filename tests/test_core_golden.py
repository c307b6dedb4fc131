"""Golden segments of nnc-format §1.9 / §1.10 (written by NNCodec 2.1.3).

Each segment decodes to the documented integers, and encoding those integers
with the documented options reproduces the bytes exactly (for example A this
includes NNCodec's eco choice: only context 97 at init set 2).
"""

from __future__ import annotations

import numpy as np
import pytest

from flwr_nncodec import _core

EXAMPLE_A_INPUT = np.array([0.1, -0.2, 0.0, 0.05, 0.3, -0.01], dtype=np.float32)

GOLDEN = [
    pytest.param(
        "dff7a00ea44606501f6042ba91dcb0", 2, 3, -32, True, True, True,
        [26, -52, 0, 13, 76, -3], id="example A, DQ, row skipping, param_opt"),
    pytest.param(
        "df668009a01e00016e73054000665d46", 2, 3, -32, False, False, False,
        [26, -51, 0, 13, 77, -3], id="example A, URQ, param_opt off"),
    pytest.param(
        "b4d80007380003931e00000019984800018ffe", 1, 3, -75, True, True, True,
        [209716, -104858, 420], id="example B second NDU, 1-D, qp -75, DQ"),
]


@pytest.mark.parametrize(
    "segment_hex,height,width,qp,dq,row_skipping,param_opt,expected_q", GOLDEN)
def test_golden_segment_decodes_to_documented_levels(
        segment_hex, height, width, qp, dq, row_skipping, param_opt, expected_q):
    # Prepare
    segment = bytes.fromhex(segment_hex)

    # Execute
    q, decoded_qp, consumed_bytes = _core.decode_segment(
        segment, height, width, has_qp=True, qp_density=2, dq=dq,
        hdsp_flag_present=False)

    # Assert
    assert q.dtype == np.int32
    assert q.tolist() == expected_q
    assert decoded_qp == qp
    assert consumed_bytes == len(segment)


@pytest.mark.parametrize(
    "segment_hex,height,width,qp,dq,row_skipping,param_opt,expected_q", GOLDEN)
def test_documented_levels_encode_to_golden_bytes(
        segment_hex, height, width, qp, dq, row_skipping, param_opt, expected_q):
    q = np.array(expected_q, dtype=np.int32)

    segment = _core.encode_segment(
        q, height, width, qp=qp, qp_density=2, dq=dq, hdsp_flag_present=False,
        row_skipping=row_skipping, param_opt=param_opt)

    assert segment.hex() == segment_hex


def test_example_a_eco_choice_is_context_97_at_set_2():
    q = np.array([26, -52, 0, 13, 76, -3], dtype=np.int32)

    chosen = _core.choose_eco_init_sets(q, 2, 3, dq=True, row_skipping=True)
    signalled = _core.decode_eco_init_sets(
        bytes.fromhex("dff7a00ea44606501f6042ba91dcb0"), 2, 3, has_qp=True,
        qp_density=2, dq=True, hdsp_flag_present=False)

    # 80 entries: 24 sig + 3 sign + 22 gt + 31 EG prefix; entry 49 is context 97.
    assert len(chosen) == 80
    assert chosen == signalled
    assert [i for i, e in enumerate(chosen) if e] == [49]
    assert chosen[49] == 2


@pytest.mark.parametrize("dq,expected_q", [
    (True, [26, -52, 0, 13, 76, -3]),
    (False, [26, -51, 0, 13, 77, -3]),
], ids=["DQ trellis", "URQ rounding"])
def test_example_a_quantisation_matches_nncodec(dq, expected_q):
    q = _core.quantize(EXAMPLE_A_INPUT, -32, 2, dq)

    assert q.tolist() == expected_q


def test_example_a_reconstruction_is_documented():
    q = np.array([26, -52, 0, 13, 76, -3], dtype=np.int32)

    x_hat = _core.dequantize(q, -32, 2)

    assert x_hat.dtype == np.float32
    assert x_hat.tolist() == [0.1015625, -0.203125, 0.0, 0.05078125, 0.296875,
                              -0.01171875]


def test_example_b_reconstruction_of_first_value():
    x_hat = _core.dequantize(np.array([209716], dtype=np.int32), -75, 2)

    assert x_hat[0] == np.float32(np.float32(5 * 2.0**-21) * np.float32(209716))
    assert abs(float(x_hat[0]) - 0.5000019) < 1e-7


@pytest.mark.parametrize("qp,expected", [
    (-75, 5 * 2.0**-21), (-56, 2.0**-14), (-50, 1.5 * 2.0**-13),
    (-44, 2.0**-11), (-38, 1.5 * 2.0**-10), (-32, 2.0**-8),
    (-26, 1.5 * 2.0**-7), (-18, 1.5 * 2.0**-5), (0, 1.0), (1, 1.25), (-1, 0.875),
])
def test_step_size_table(qp, expected):
    assert _core.step_size(qp, 2) == expected


def test_step_size_other_densities():
    assert _core.step_size(-8, 3) == 2.0**-1
    assert _core.step_size(-7, 3) == 1.125 * 2.0**-1
    assert _core.step_size(5, 0) == 32.0
    with pytest.raises(ValueError, match="qp_density must be in 0..7, got 8"):
        _core.step_size(0, 8)
