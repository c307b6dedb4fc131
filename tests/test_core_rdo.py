"""Rate-aware quantisation and the fused / multi-threaded encoders."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from flwr_nncodec import _core

DQ_NEXT_STATE = [(0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6)]
OPTIONS = dict(qp_density=2, hdsp_flag_present=False, row_skipping=True,
               param_opt=True)


def _gaussian(n, seed, scale=0.05):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def _coded(x, qp, dq, lambda_scale):
    """(bits per value, MSE) of x coded as one 1 x n tensor."""
    q = _core.quantize(x, qp, 2, dq, lambda_scale)
    segment = _core.encode_segment(q, 1, x.size, qp=qp, dq=dq, **OPTIONS)
    decoded = _core.decode_segment(segment, 1, x.size, has_qp=True, qp_density=2,
                                   dq=dq, hdsp_flag_present=False)[0]
    np.testing.assert_array_equal(decoded, q)
    mse = float(np.mean((_core.dequantize(q, qp, 2) - x) ** 2))
    return 8 * len(segment) / x.size, mse


def _dq_parity_ok(q) -> bool:
    state = 0
    for value in q.tolist():
        if state & 1 == 0 and value % 2:
            return False
        sgn = (value > 0) - (value < 0)
        state = DQ_NEXT_STATE[state][((value + sgn * (state & 1)) >> 1) & 1]
    return True


def test_urq_rdoq_picks_among_zero_and_the_two_nearest_magnitudes():
    x = _gaussian(50000, seed=1)
    step = _core.step_size(-20, 2)

    q = _core.quantize(x, -20, 2, False, 1.0)

    rounded = np.round(np.abs(x.astype(np.float64)) / step)  # ties: see next test
    magnitude = np.abs(q)
    allowed = (magnitude == 0) | (magnitude == rounded) | (magnitude == rounded - 1)
    assert np.all(allowed)
    assert np.all((q == 0) | (np.sign(q) == np.sign(x)))
    assert np.any(magnitude < rounded)


def test_lambda_zero_is_nncodec_rounding():
    x = _gaussian(20000, seed=2)
    step = np.float32(_core.step_size(-26, 2))
    inverse = np.float32(1.0) / step
    half_away = np.sign(x) * np.floor(np.abs(x * inverse) + 0.5)

    np.testing.assert_array_equal(_core.quantize(x, -26, 2, False, 0.0), half_away)


@pytest.mark.parametrize("dq", [False, True], ids=["URQ", "DQ"])
def test_rate_aware_quantisation_beats_lambda_zero_at_equal_error(dq):
    # Prepare: RDO at qp -16, and the lambda-0 operating points around it.
    x = _gaussian(1 << 16, seed=3)
    bits_rdo, mse_rdo = _coded(x, -16, dq, 1.0)
    plain = [_coded(x, qp, dq, 0.0) for qp in range(-22, -6)]

    # Execute: the cheapest lambda-0 point with no more error than RDO.
    no_worse = [bits for bits, mse in plain if mse <= mse_rdo]

    # Assert
    assert no_worse, "no lambda-0 operating point reaches the RDO error"
    assert bits_rdo < min(no_worse)


def test_rate_aware_dq_obeys_parity_and_saves_bits():
    x = _gaussian(30000, seed=4)

    q0 = _core.quantize(x, -24, 2, True, 0.0)
    q1 = _core.quantize(x, -24, 2, True, 1.0)

    assert _dq_parity_ok(q1)
    bits0, mse0 = _coded(x, -24, True, 0.0)
    bits1, mse1 = _coded(x, -24, True, 1.0)
    assert bits1 < bits0
    assert mse0 <= mse1 < 1.5 * mse0
    assert not np.array_equal(q0, q1)


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("lambda_scale, shown", [
    (-1.0, "-1"), (-1e-300, "-1e-300"), (1e308, "1e+308"), (float("inf"), "inf"),
    (float("nan"), "nan"),
])
def test_lambda_outside_0_to_1e6_is_rejected(dq, lambda_scale, shown):
    # 1e308 used to overflow the DQ path costs ("no admissible DQ path").
    expected = re.escape(f"lambda_scale must be in 0..1e6, got {shown}") + "$"
    with pytest.raises(ValueError, match=expected):
        _core.quantize(_gaussian(64, seed=5), -32, 2, dq, lambda_scale)


def test_options_bound_is_the_cores_bound():
    # The options check against _core.MAX_LAMBDA_SCALE: the largest value
    # they pass must quantise, the next double above it must be refused.
    from flwr_nncodec.options import MAX_LAMBDA_SCALE

    x = _gaussian(64, seed=5)
    assert MAX_LAMBDA_SCALE == 1e6
    _core.quantize(x, -32, 2, True, MAX_LAMBDA_SCALE)
    with pytest.raises(ValueError, match="lambda_scale must be in 0..1e6"):
        _core.quantize(x, -32, 2, True, np.nextafter(MAX_LAMBDA_SCALE, np.inf))


def test_largest_lambda_zeroes_the_levels():
    q = _core.quantize(_gaussian(64, seed=5), -32, 2, True, 1e6)

    np.testing.assert_array_equal(q, np.zeros(64, np.int32))


@pytest.mark.parametrize("dq,lambda_scale", [(False, 0.0), (True, 0.0), (True, 1.0),
                                             (False, 0.5)])
def test_encode_tensor_equals_quantize_then_encode_segment(dq, lambda_scale):
    x = _gaussian(40 * 77, seed=6)
    x[:77] = 0.0

    segment, q = _core.encode_tensor(x, 40, 77, qp=-30, dq=dq,
                                     lambda_scale=lambda_scale, **OPTIONS)

    expected_q = _core.quantize(x, -30, 2, dq, lambda_scale)
    np.testing.assert_array_equal(q, expected_q)
    assert segment == _core.encode_segment(expected_q, 40, 77, qp=-30, dq=dq, **OPTIONS)


def test_encode_tensor_with_tca_base():
    base = _core.quantize(_gaussian(300, seed=7), -36, 2, False)
    x = _gaussian(300, seed=7) + _gaussian(300, seed=8, scale=0.002)

    options = dict(OPTIONS, hdsp_flag_present=True)
    segment, q = _core.encode_tensor(x, 10, 30, qp=-36, dq=False, lambda_scale=0.0,
                                     tca_base=base, **options)

    decoded = _core.decode_segment(segment, 10, 30, has_qp=True, qp_density=2, dq=False,
                                   hdsp_flag_present=True, tca_base=base)[0]
    np.testing.assert_array_equal(decoded, q)


@pytest.mark.parametrize("num_threads", [0, 1, 3])
def test_encode_tensors_matches_serial_encoding(num_threads):
    shapes = [(64, 100), (1, 513), (7, 1), (30, 30), (1, 1)]
    xs = [_gaussian(h * w, seed=10 + i) for i, (h, w) in enumerate(shapes)]
    qps = [-32, -75, -40, -28, -32]
    bases = [None, None, _core.quantize(xs[2], -40, 2, True), None, None]
    options = dict(OPTIONS, dq=True, lambda_scale=0.5, hdsp_flag_present=True)

    results = _core.encode_tensors(xs, shapes, qps, tca_bases=bases,
                                   num_threads=num_threads, **options)

    assert len(results) == len(xs)
    for x, (h, w), qp, base, (segment, q, entry_points, x_hat) in zip(
        xs, shapes, qps, bases, results
    ):
        expected = _core.encode_tensor(x, h, w, qp=qp, tca_base=base, **options)
        assert segment == expected[0]
        np.testing.assert_array_equal(q, expected[1])
        assert entry_points == []  # raster scan
        assert x_hat is None  # not asked for


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("scan_order", [0, 2])
def test_encode_tensors_reconstruction_is_the_dequantised_levels(num_threads,
                                                                 scan_order):
    # Large enough for the trellis halves and the sliced dequantisation.
    shapes = [(300, 1000), (1, 7), (129, 33)]
    xs = [_gaussian(h * w, seed=40 + i, scale=0.02) for i, (h, w) in enumerate(shapes)]
    qps = [-32, -40, -28]
    options = dict(OPTIONS, dq=True, lambda_scale=0.5)

    results = _core.encode_tensors(xs, shapes, qps, num_threads=num_threads,
                                   scan_orders=[scan_order] * 3, reconstruct=True,
                                   **options)
    plain = _core.encode_tensors(xs, shapes, qps, num_threads=num_threads,
                                 scan_orders=[scan_order] * 3, **options)

    for (segment, q, entry_points, x_hat), (segment_0, q_0, _, _), qp in zip(
            results, plain, qps):
        assert segment == segment_0
        np.testing.assert_array_equal(q, q_0)
        assert x_hat.dtype == np.float32
        np.testing.assert_array_equal(x_hat, _core.dequantize(q, qp, 2))
        step = np.float32(_core.step_size(qp, 2))
        np.testing.assert_array_equal(x_hat, step * q.astype(np.float32))


def test_encode_tensors_errors_name_the_tensor():
    xs = [_gaussian(4, seed=20), np.full(4, 1.0e9, dtype=np.float32)]
    options = dict(OPTIONS, dq=False, lambda_scale=0.0)

    with pytest.raises(
        ValueError, match=r"tensor #1: quantize: max\|x\| = 1e\+09 divided .* qp -128"
    ):
        _core.encode_tensors(xs, [(2, 2), (2, 2)], [-32, -128], **options)
    with pytest.raises(ValueError,
                       match=r"xs\[1\] has 4 elements, expected height\*width = 6"):
        _core.encode_tensors(xs, [(2, 2), (2, 3)], [-32, -32], **options)
    with pytest.raises(ValueError, match="need equal lengths, got 2, 1, 2"):
        _core.encode_tensors(xs, [(2, 2)], [-32, -32], **options)


@pytest.mark.parametrize("num_threads", [0, 1, 2])
def test_decode_segments_matches_single_decodes(num_threads):
    # Prepare: a DQ weight, a URQ bias with a TCA base, an INT tensor and a
    # codebook tensor, as the NDUs of one stream could carry them.
    w = _core.quantize(_gaussian(40 * 30, seed=30), -32, 2, True)
    b_base = _core.quantize(_gaussian(50, seed=31), -75, 2, False)
    b = _core.quantize(_gaussian(50, seed=31) + 1e-5, -75, 2, False)
    ints = np.arange(-6, 6, dtype=np.int32)
    cb = np.random.default_rng(32).integers(0, 5, 24).astype(np.int32)
    segments = [
        _core.encode_segment(w, 40, 30, qp=-32, dq=True, **OPTIONS),
        _core.encode_segment(b, 1, 50, qp=-75, dq=False, tca_base=b_base,
                             **dict(OPTIONS, hdsp_flag_present=True)),
        _core.encode_segment(ints, 3, 4, qp=None, dq=False, **OPTIONS),
        _core.encode_segment(cb, 4, 6, qp=-20, dq=False, codebook_size=5,
                             codebook_zero_offset=2, **OPTIONS),
    ]

    # Execute
    results = _core.decode_segments(
        [bytearray(segments[0]), segments[1], segments[2], memoryview(segments[3])],
        [(40, 30), (1, 50), (3, 4), (4, 6)], has_qp=[True, True, False, True],
        dq=[True, False, False, False], qp_density=2,
        hdsp_flag_present=[False, True, False, False],
        tca_bases=[None, b_base, None, None], codebook_sizes=[0, 0, 0, 5],
        codebook_zero_offsets=[0, 0, 0, 2], num_threads=num_threads)

    # Assert
    for (q, qp, consumed, recon), expected_q, expected_qp, segment in zip(
            results, [w, b, ints, cb], [-32, -75, None, -20], segments):
        np.testing.assert_array_equal(q, expected_q)
        assert qp == expected_qp
        assert consumed == len(segment)
        assert recon is None  # not asked for


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("scan_order", [0, 1])
def test_decode_segments_dequantises_on_the_decoding_threads(num_threads, scan_order):
    # A block-scanned DQ weight (block rows on several threads), a URQ bias,
    # an INT tensor and a codebook tensor (neither is dequantised).
    x = _gaussian(70 * 45, seed=50, scale=0.02)
    (w_segment, w, w_entries, _), = _core.encode_tensors(
        [x], [(70, 45)], [-30], scan_orders=[scan_order], num_threads=2,
        **dict(OPTIONS, dq=True, lambda_scale=0.5))
    b = _core.quantize(_gaussian(50, seed=51), -75, 2, False)
    ints = np.arange(-6, 6, dtype=np.int32)
    cb = np.random.default_rng(52).integers(0, 5, 24).astype(np.int32)
    segments = [
        w_segment,
        _core.encode_segment(b, 1, 50, qp=-75, dq=False, **OPTIONS),
        _core.encode_segment(ints, 3, 4, qp=None, dq=False, **OPTIONS),
        _core.encode_segment(cb, 4, 6, qp=-20, dq=False, codebook_size=5,
                             codebook_zero_offset=2, **OPTIONS),
    ]
    kwargs = dict(has_qp=[True, True, False, True], dq=[True, False, False, False],
                  qp_density=2, hdsp_flag_present=[False] * 4,
                  codebook_sizes=[0, 0, 0, 5], codebook_zero_offsets=[0, 0, 0, 2],
                  scan_orders=[scan_order, 0, 0, 0],
                  entry_points=[w_entries, [], [], []], num_threads=num_threads)

    # The MPS qp (here +3) adds to each segment's qp offset.
    results = _core.decode_segments(segments, [(70, 45), (1, 50), (3, 4), (4, 6)],
                                    dequantize_qp_offset=3, **kwargs)

    (q_w, qp_w, _, x_w), (q_b, qp_b, _, x_b), ints_out, cb_out = results
    np.testing.assert_array_equal(q_w, w)
    np.testing.assert_array_equal(x_w, _core.dequantize(w, qp_w + 3, 2))
    np.testing.assert_array_equal(x_b, _core.dequantize(b, qp_b + 3, 2))
    assert ints_out[3] is None and cb_out[3] is None
    # A step size beyond float32 gives no x_hat (the caller reports it).
    huge = _core.decode_segments(segments[:2], [(70, 45), (1, 50)],
                                 dequantize_qp_offset=4000,
                                 **{k: v[:2] if isinstance(v, list) else v
                                    for k, v in kwargs.items()})
    assert [r[3] for r in huge] == [None, None]
    # An offset near the int64 limits gives none either (and no overflow).
    for offset in (-2**63, 2**63 - 1):
        extreme = _core.decode_segments(segments[1:2], [(1, 50)],
                                        dequantize_qp_offset=offset,
                                        **{k: v[1:2] if isinstance(v, list) else v
                                           for k, v in kwargs.items()})
        assert extreme[0][3] is None
    # Values that overflow float32 give none either: q * step > 3.4e38.
    overflow = _core.decode_segments(segments[1:2], [(1, 50)],
                                     dequantize_qp_offset=75 + 500,
                                     **{k: v[1:2] if isinstance(v, list) else v
                                        for k, v in kwargs.items()})
    step = _core.step_size(qp_b + 75 + 500, 2)
    assert np.isfinite(step) and np.abs(b).max() * float(step) > 3.4028235e38
    assert overflow[0][3] is None


def test_decode_segments_errors_name_the_segment():
    good = _core.encode_segment(np.zeros(4, dtype=np.int32), 2, 2, qp=-32, dq=False,
                                **OPTIONS)

    with pytest.raises(ValueError, match=r"tensor #1: decode_segment: data ends early"):
        _core.decode_segments([good, good[:2]], [(2, 2), (2, 2)], has_qp=[True, True],
                              dq=[False, False], qp_density=2,
                              hdsp_flag_present=[False, False])
    with pytest.raises(ValueError, match="dq has 1 entries, datas has 2"):
        _core.decode_segments([good, good], [(2, 2), (2, 2)], has_qp=[True, True],
                              dq=[False], qp_density=2,
                              hdsp_flag_present=[False, False])


def test_list_arguments_are_not_silently_converted():
    options = dict(OPTIONS, dq=False, lambda_scale=0.0)
    good = np.zeros(6, dtype=np.float32)

    for bad in (np.zeros(6), np.zeros(6, dtype=np.int64), np.zeros(12, np.float32)[::2]):
        with pytest.raises(TypeError, match=r"xs\[1\] must be a C-contiguous 1-D float32"):
            _core.encode_tensors([good, bad], [(2, 3), (2, 3)], [-32, -32], **options)
    with pytest.raises(TypeError, match=r"tca_bases\[0\] must be None or a C-contiguous"):
        _core.encode_tensors([good], [(2, 3)], [-32], tca_bases=[np.zeros(6)], **options)
    with pytest.raises(TypeError, match=r"datas\[0\] must be a C-contiguous 1-D uint8"):
        _core.decode_segments([np.array([1, 2])], [(1, 1)], has_qp=[True], dq=[False],
                              qp_density=2, hdsp_flag_present=[False])


def test_large_rate_aware_trellis_in_halves_is_one_path_on_any_thread_count():
    # 2**18 values and more: the rate-aware DQ trellis is searched in two
    # halves (on two threads when allowed); the levels must still be one
    # admissible path, identical for 1 and 2 threads and for quantize().
    height, width = 513, 512  # 262,656 values
    x = _gaussian(height * width, seed=77, scale=0.02)
    options = dict(OPTIONS, dq=True, lambda_scale=0.5)
    one = _core.encode_tensors([x], [(height, width)], [-32], num_threads=1, **options)
    two = _core.encode_tensors([x], [(height, width)], [-32], num_threads=2, **options)
    (segment, q, _, _), (segment_2, q_2, _, _) = one[0], two[0]
    assert segment == segment_2
    np.testing.assert_array_equal(q, q_2)
    np.testing.assert_array_equal(q, _core.quantize(x, -32, 2, True, 0.5))

    decoded = _core.decode_segment(np.frombuffer(segment, np.uint8), height, width,
                                   has_qp=True, qp_density=2, dq=True,
                                   hdsp_flag_present=False)[0]
    np.testing.assert_array_equal(decoded, q)
    # The cut costs nothing measurable against the minimum-MSE trellis' error.
    step = _core.step_size(-32, 2)
    mse = np.mean((q * step - x) ** 2)
    mse_min = np.mean((_core.quantize(x, -32, 2, True, 0.0) * step - x) ** 2)
    assert mse_min <= mse <= 1.05 * mse_min


needs_avx512 = pytest.mark.skipif(
    not _core.avx512_available(), reason="no AVX-512 kernels on this CPU or build"
)


def _trellis_input(kind: str, n: int, rng) -> np.ndarray:
    step = _core.step_size(-32, 2)
    draws = {
        "normal": lambda: rng.normal(0, 0.05, n),
        "laplace": lambda: rng.laplace(0, 0.3, n),  # magnitudes past 64
        "sparse": lambda: rng.normal(0, 0.05, n) * (rng.random(n) < 0.2),
        "cauchy": lambda: rng.standard_cauchy(n) * 0.01,
        # Exact ties between candidates: half-integer and integer multiples.
        "halves": lambda: (rng.integers(-40, 40, n) + 0.5) * step,
        "integers": lambda: rng.integers(-20, 20, n) * step,
    }
    return draws[kind]().astype(np.float32)


@needs_avx512
@pytest.mark.parametrize("kind", ["normal", "laplace", "sparse", "cauchy", "halves",
                                  "integers"])
@pytest.mark.parametrize("n, start_state", [(1, 0), (9, 3), (287, -1), (289, 5),
                                             (545, 7), (5003, 0)])
@pytest.mark.parametrize("lambda_scale", [0.05, 0.5, 4.0])
def test_avx512_and_portable_trellis_passes_agree(kind, n, start_state, lambda_scale):
    # Final path costs to the bit and every back pointer (edge and candidate
    # of every state), across settles (after 288, then every 256 values) and
    # partial batches of 8.
    x = _trellis_input(kind, n, np.random.default_rng(n))

    portable = _core.dq_forward_pass(x, -32, 2, lambda_scale, start_state, False)
    vector = _core.dq_forward_pass(x, -32, 2, lambda_scale, start_state, True)

    assert vector[0] == portable[0]
    assert vector[1] == portable[1]
    assert len(portable[1]) == 3 * n


# Predecessor state per (state, edge) of the DQ trellis (nnc-format §2.3,
# the transitions read backwards).
_PRED_STATE = [(0, 4), (2, 6), (0, 4), (2, 6), (3, 7), (1, 5), (3, 7), (1, 5)]


def _full_traceback(x, qp, lambda_scale):
    """q of the cheapest path of dq_forward_pass, traced back position by
    position in Python: the reference for quantize()'s traceback, which
    skips the stretches its rate model already settled."""
    costs, rows = _core.dq_forward_pass(x, qp, 2, lambda_scale, 0, False)
    rows = np.frombuffer(rows, np.uint8).reshape(-1, 3).astype(np.uint32)
    rows = rows[:, 0] | (rows[:, 1] << 8) | (rows[:, 2] << 16)
    inverse_step = np.float32(1.0) / np.float32(_core.step_size(qp, 2))
    state = int(np.argmin(costs))  # ties to the lowest state, as the core
    q = np.zeros(len(x), np.int32)
    for i in range(len(x) - 1, -1, -1):
        bits = (int(rows[i]) >> (3 * state)) & 7
        prev = _PRED_STATE[state][bits & 1]
        quantizer, j = prev & 1, bits >> 1
        t = float(inverse_step) * float(x[i])
        low = 2 * math.floor((t - quantizer) * 0.5) + quantizer
        third = 0 if quantizer or low not in (0, -2) else low
        q[i] = [[low, low + 2, third], [low + 2, low, 0]][quantizer][j]
        state = prev
    return q


@pytest.mark.parametrize("kind", ["normal", "sparse", "halves", "integers"])
@pytest.mark.parametrize("lambda_scale", [0.05, 0.5, 4.0])
def test_quantize_traceback_equals_the_full_traceback(kind, lambda_scale):
    # quantize() jumps over settled stretches where its path meets them and
    # traces the others; at these sizes both happen many times.
    x = _trellis_input(kind, 6000, np.random.default_rng(11))

    expected = _full_traceback(x, -32, lambda_scale)

    np.testing.assert_array_equal(_core.quantize(x, -32, 2, True, lambda_scale),
                                  expected)
    assert np.count_nonzero(expected) > 1000


@needs_avx512
@pytest.mark.parametrize("dq, with_base, max_positions, height", [
    (True, False, 65536, 120), (False, False, 0, 120), (True, True, 0, 120),
    (True, False, 3000, 120),
    # About 1.4M bins: the bin lists are estimated once in mid-walk (2^20).
    (True, False, 0, 1400),
])
def test_avx512_and_portable_eco_steps_agree(dq, with_base, max_positions, height):
    rng = np.random.default_rng(5)
    width = 250
    x = rng.laplace(0, 0.4, height * width) * (rng.random(height * width) < 0.8)
    q = _core.quantize(x.astype(np.float32), -24, 2, dq, 0.5)
    base = (q // 2).astype(np.int32) if with_base else None
    options = dict(dq=dq, row_skipping=True, tca_base=base,
                   eco_max_positions=max_positions)

    portable = _core.eco_init_set_costs(q, height, width, avx512=False, **options)
    vector = _core.eco_init_set_costs(q, height, width, avx512=True, **options)

    assert vector == portable
    assert len(portable) % 9 == 0 and max(portable) > 0


_KERNEL_PROBE = """
import hashlib, json
import numpy as np
from flwr_nncodec import _core
x = np.random.default_rng(7).normal(0, 0.05, (1 << 18) + 3).astype(np.float32)
q = _core.quantize(x, -32, 2, True, 0.5)
print(json.dumps([_core.dq_trellis_kernel(), hashlib.sha256(q.tobytes()).hexdigest()]))
"""


def _probe_kernel(disable_avx512: str | None) -> list:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("NNC_DISABLE_AVX512", None)
    if disable_avx512 is not None:
        env["NNC_DISABLE_AVX512"] = disable_avx512
    done = subprocess.run([sys.executable, "-c", _KERNEL_PROBE], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_avx512
def test_nnc_disable_avx512_selects_the_portable_kernels_with_the_same_levels():
    default_kernel, default_digest = _probe_kernel(None)
    zero_kernel, _ = _probe_kernel("0")
    portable_kernel, portable_digest = _probe_kernel("1")

    assert (default_kernel, zero_kernel, portable_kernel) == (
        "avx512", "avx512", "portable")
    assert portable_digest == default_digest


@pytest.mark.parametrize("dq, with_base, codebook", [
    (True, False, 0), (False, False, 0), (True, True, 0), (False, False, 9),
])
def test_eco_choice_on_two_threads_equals_one_thread(dq, with_base, codebook):
    # From 2^15 positions one thread estimates the significance and sign
    # contexts, the other the greater-than and Exp-Golomb ones.
    rng = np.random.default_rng(11)
    height, width = 260, 300
    x = (rng.laplace(0, 0.4, (height, width)) * (rng.random((height, width)) < 0.7))
    if codebook:
        q = rng.integers(0, codebook, height * width).astype(np.int32)
    else:
        q = _core.quantize(x.astype(np.float32).ravel(), -20, 2, dq, 0.5)
    base = (q // 2).astype(np.int32) if with_base else None
    options = dict(dq=dq, row_skipping=True, tca_base=base, codebook_size=codebook,
                   codebook_zero_offset=codebook // 2)

    serial = _core.choose_eco_init_sets(q, height, width, num_threads=1, **options)
    threaded = _core.choose_eco_init_sets(q, height, width, num_threads=2, **options)

    assert threaded == serial
    assert len(set(serial)) > 1  # the choice is not trivially all zero
