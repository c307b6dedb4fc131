"""Property tests: any admissible input round-trips through the core."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_nncodec import _core

shapes = st.tuples(st.integers(0, 12), st.integers(0, 12))
flags = st.booleans()


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-4, 10.0),
       qp=st.integers(-60, 10), dq=flags, row_skipping=flags, param_opt=flags,
       lambda_scale=st.sampled_from([0.0, 0.5, 2.0]), hdsp=flags, with_base=flags,
       zero_rows=st.integers(0, 3))
def test_float_tensors_round_trip(shape, seed, scale, qp, dq, row_skipping, param_opt,
                                  lambda_scale, hdsp, with_base, zero_rows):
    height, width = shape
    rng = np.random.default_rng(seed)
    x = (rng.laplace(size=(height, width)) * scale).astype(np.float32)
    x[:zero_rows] = 0.0
    x = x.reshape(-1)
    base = rng.integers(-3, 4, height * width).astype(np.int32) if with_base else None

    segment, q = _core.encode_tensor(
        x, height, width, qp=qp, qp_density=2, dq=dq, lambda_scale=lambda_scale,
        hdsp_flag_present=hdsp, row_skipping=row_skipping, param_opt=param_opt,
        tca_base=base)
    decoded, decoded_qp, consumed = _core.decode_segment(
        segment, height, width, has_qp=True, qp_density=2, dq=dq,
        hdsp_flag_present=hdsp, tca_base=base)

    np.testing.assert_array_equal(decoded, q)
    assert decoded_qp == qp
    assert consumed == len(segment)
    if lambda_scale == 0:
        # URQ rounds to within half a step; the DQ trellis picks one of the
        # two nearest indices of a quantiser whose indices are 2 steps apart.
        step = _core.step_size(qp, 2)
        error = np.abs(_core.dequantize(q, qp, 2).astype(np.float64) - x)
        # float32 arithmetic (1/step, the product, the reconstruction) adds
        # a few ulps of |x|.
        bound = (0.5 if not dq else 2.0) * step + np.abs(x) * 2.0**-20
        assert np.all(error <= bound)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=0, max_size=40),
       unary_len=st.integers(1, 16), row_skipping=flags, param_opt=flags)
def test_int_payloads_round_trip(values, unary_len, row_skipping, param_opt):
    q = np.array(values, dtype=np.int32)
    width = max(1, len(values) // 4) if len(values) else 1
    height = len(values) // width if len(values) else 0
    q = q[: height * width]

    segment = _core.encode_segment(
        q, height, width, qp=None, qp_density=2, dq=False, hdsp_flag_present=False,
        row_skipping=row_skipping, param_opt=param_opt, unary_len=unary_len)
    decoded, qp, consumed = _core.decode_segment(
        segment, height, width, has_qp=False, qp_density=2, dq=False,
        hdsp_flag_present=False, unary_len=unary_len)

    np.testing.assert_array_equal(decoded, q)
    assert qp is None
    assert consumed == len(segment)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(1, 70), shape=shapes)
def test_codebook_indices_round_trip(data, size, shape):
    height, width = shape
    zero_offset = data.draw(st.integers(0, size - 1))
    q = np.array(data.draw(st.lists(st.integers(0, size - 1), min_size=height * width,
                                    max_size=height * width)), dtype=np.int32)

    segment = _core.encode_segment(
        q, height, width, qp=-20, qp_density=2, dq=False, hdsp_flag_present=False,
        row_skipping=True, param_opt=True, codebook_size=size,
        codebook_zero_offset=zero_offset)
    decoded = _core.decode_segment(
        segment, height, width, has_qp=True, qp_density=2, dq=False,
        hdsp_flag_present=False, codebook_size=size, codebook_zero_offset=zero_offset)[0]

    np.testing.assert_array_equal(decoded, q)
