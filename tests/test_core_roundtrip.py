"""Round trips, DQ admissibility and error handling of the C++ core."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from flwr_nncodec import _core

DQ_NEXT_STATE = [(0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6)]


def _encode(q, height, width, **overrides):
    options = dict(qp=-32, qp_density=2, dq=False, hdsp_flag_present=False,
                   row_skipping=True, param_opt=True)
    options.update(overrides)
    return _core.encode_segment(q, height, width, **options)


def _decode(segment, height, width, **overrides):
    options = dict(has_qp=True, qp_density=2, dq=False, hdsp_flag_present=False)
    options.update(overrides)
    return _core.decode_segment(segment, height, width, **options)


def _gaussian(shape, seed, scale=0.05):
    values = np.random.default_rng(seed).standard_normal(shape) * scale
    return values.astype(np.float32)


def _dq_parity_ok(q: np.ndarray, skipped_rows=(), width=None) -> bool:
    """Every q has the parity its DQ state demands (nnc-format §2.3)."""
    state = 0
    for value in q.tolist():
        if state & 1 == 0 and value % 2 != 0:
            return False
        odd = state & 1
        sgn = (value > 0) - (value < 0)
        level = (value + sgn * odd) >> 1
        state = DQ_NEXT_STATE[state][level & 1]
    return True


SHAPES = [(1, 1), (1, 7), (7, 1), (2, 3), (5, 17), (31, 64), (3, 1000)]


@pytest.mark.parametrize("dq", [False, True], ids=["URQ", "DQ"])
@pytest.mark.parametrize("height,width", SHAPES)
@pytest.mark.parametrize("row_skipping", [False, True], ids=["no row skip", "row skip"])
def test_quantised_gaussian_round_trips(dq, height, width, row_skipping):
    # Prepare: some all-zero rows so that row skipping has work to do.
    x = _gaussian((height, width), seed=height * 1000 + width)
    x[::3] = 0.0
    q = _core.quantize(x.reshape(-1), -38, 2, dq)

    # Execute
    segment = _encode(q, height, width, qp=-38, dq=dq, row_skipping=row_skipping)
    decoded, qp, consumed_bytes = _decode(segment, height, width, dq=dq)

    # Assert
    np.testing.assert_array_equal(decoded, q)
    assert qp == -38
    assert consumed_bytes == len(segment)


def test_row_skipping_saves_bytes_on_zero_rows():
    x = _gaussian((64, 32), seed=1)
    x[1::2] = 0.0
    q = _core.quantize(x.reshape(-1), -32, 2, False)

    with_skip = _encode(q, 64, 32, row_skipping=True)
    without_skip = _encode(q, 64, 32, row_skipping=False)

    assert len(with_skip) < len(without_skip)
    np.testing.assert_array_equal(_decode(with_skip, 64, 32)[0], q)
    np.testing.assert_array_equal(_decode(without_skip, 64, 32)[0], q)


def test_dq_trellis_output_obeys_parity_and_beats_urq_at_equal_step():
    x = _gaussian(20000, seed=2)
    q_dq = _core.quantize(x, -36, 2, True)
    q_urq_coarse = _core.quantize(x, -32, 2, False)  # step 2*delta like DQ's quantisers

    assert _dq_parity_ok(q_dq)
    err_dq = np.mean((_core.dequantize(q_dq, -36, 2) - x) ** 2)
    err_urq = np.mean((_core.dequantize(q_urq_coarse, -32, 2) - x) ** 2)
    assert err_dq < err_urq


def test_decoded_dq_levels_obey_parity():
    x = _gaussian((16, 50), seed=3)
    q = _core.quantize(x.reshape(-1), -40, 2, True)

    decoded = _decode(_encode(q, 16, 50, qp=-40, dq=True), 16, 50, dq=True)[0]

    assert _dq_parity_ok(decoded)
    np.testing.assert_array_equal(decoded, q)


def test_inadmissible_dq_index_is_rejected():
    q = np.array([1, 0, 0], dtype=np.int32)  # state 0 needs an even q

    with pytest.raises(ValueError, match=r"q\[0\] = 1 is not admissible in DQ state 0"):
        _encode(q, 1, 3, dq=True)


def test_urq_rounds_half_away_from_zero():
    step = _core.step_size(-32, 2)
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.4999, 0.49], dtype=np.float32) * step

    assert _core.quantize(x, -32, 2, False).tolist() == [1, -1, 2, -2, 2, 0]


@pytest.mark.parametrize("dq", [False, True], ids=["URQ", "DQ"])
def test_quantize_overflow_names_max_and_qp(dq):
    x = np.array([0.0, 1.0e4, -3.0], dtype=np.float32)

    with pytest.raises(ValueError, match=r"max\|x\| = 10000 divided by .* qp -128"):
        _core.quantize(x, -128, 2, dq)
    # %g form: a huge value is not written out in 39 digits.
    with pytest.raises(ValueError, match=r"^quantize: max\|x\| = 3e\+38 divided"):
        _core.quantize(np.array([1.0, -3e38], np.float32), -32, 2, dq)


def test_quantize_rejects_nan():
    with pytest.raises(ValueError, match="NaN or infinity"):
        _core.quantize(np.array([np.nan], dtype=np.float32), -32, 2, False)


@pytest.mark.parametrize("qp", [-128, -1, 0, 127])
def test_qp_offset_extremes_round_trip(qp):
    q = np.array([3, -2, 0, 1], dtype=np.int32)

    segment = _encode(q, 2, 2, qp=qp)

    assert _decode(segment, 2, 2)[1] == qp


def test_qp_outside_offset_range_is_rejected():
    with pytest.raises(ValueError, match=r"qp -129 does not fit the 8-bit qp offset"):
        _encode(np.zeros(4, dtype=np.int32), 2, 2, qp=-129)


def test_int_payload_without_qp_round_trips_extreme_values():
    q = np.array([0, 1, -1, 2**31 - 1, -(2**31) + 1, -(2**31), 12, -13, 70000],
                 dtype=np.int32)

    segment = _encode(q, 3, 3, qp=None)
    decoded, qp, consumed_bytes = _decode(segment, 3, 3, has_qp=False)

    np.testing.assert_array_equal(decoded, q)
    assert qp is None
    assert consumed_bytes == len(segment)


@pytest.mark.parametrize("dq", [False, True], ids=["URQ", "DQ"])
@pytest.mark.parametrize("row_skipping", [False, True], ids=["no row skip", "row skip"])
def test_tca_base_round_trip_and_needs_the_same_base(dq, row_skipping):
    # Prepare: a base update and a correlated new update.
    x_base = _gaussian((12, 40), seed=4)
    x_new = x_base + _gaussian((12, 40), seed=5, scale=0.01)
    x_new[5] = 0.0
    base = _core.quantize(x_base.reshape(-1), -40, 2, dq)
    q = _core.quantize(x_new.reshape(-1), -40, 2, dq)

    # Execute
    with_tca = _encode(q, 12, 40, qp=-40, dq=dq, hdsp_flag_present=True,
                       row_skipping=row_skipping, tca_base=base)
    without_tca = _encode(q, 12, 40, qp=-40, dq=dq, hdsp_flag_present=True,
                          row_skipping=row_skipping)

    # Assert
    decoded = _decode(with_tca, 12, 40, dq=dq, hdsp_flag_present=True, tca_base=base)[0]
    np.testing.assert_array_equal(decoded, q)
    assert with_tca != without_tca
    decoded_plain = _decode(without_tca, 12, 40, dq=dq, hdsp_flag_present=True)[0]
    np.testing.assert_array_equal(decoded_plain, q)


def test_tca_base_length_is_checked():
    with pytest.raises(ValueError,
                       match="tca_base has 5 elements, expected height\\*width = 6"):
        _encode(np.zeros(6, dtype=np.int32), 2, 3, tca_base=np.zeros(5, dtype=np.int32))


@pytest.mark.parametrize("size,zero_offset", [(1, 0), (2, 0), (2, 1), (3, 1), (6, 2),
                                               (16, 8), (40, 3), (300, 299)])
@pytest.mark.parametrize("param_opt", [False, True])
def test_codebook_indices_round_trip(size, zero_offset, param_opt):
    rng = np.random.default_rng(size * 7 + zero_offset)
    q = rng.integers(0, size, 6 * 11).astype(np.int32)
    q[:11] = zero_offset  # one all-zero (skippable) row

    segment = _encode(q, 6, 11, codebook_size=size, codebook_zero_offset=zero_offset,
                      param_opt=param_opt)
    decoded = _decode(segment, 6, 11, codebook_size=size,
                      codebook_zero_offset=zero_offset)[0]

    np.testing.assert_array_equal(decoded, q)


def test_codebook_index_outside_codebook_is_rejected():
    q = np.array([0, 1, 3], dtype=np.int32)

    with pytest.raises(ValueError, match=r"codebook index q\[2\] = 3 is outside 0..2"):
        _encode(q, 1, 3, codebook_size=3, codebook_zero_offset=1)


def test_all_zero_and_empty_tensors_round_trip():
    zeros = np.zeros(4 * 9, dtype=np.int32)
    empty = np.zeros(0, dtype=np.int32)

    np.testing.assert_array_equal(_decode(_encode(zeros, 4, 9), 4, 9)[0], zeros)
    assert _decode(_encode(empty, 0, 5), 0, 5)[0].size == 0


def test_eco_init_sets_can_be_forced_and_are_signalled():
    q = _core.quantize(_gaussian(500, seed=6), -40, 2, False)
    forced = np.zeros(59, dtype=np.uint8)
    forced[[0, 10, 58]] = [8, 3, 1]

    segment = _encode(q, 1, 500, param_opt=False, eco_init_sets=forced)

    signalled = _core.decode_eco_init_sets(segment, 1, 500, has_qp=True, qp_density=2,
                                           dq=False, hdsp_flag_present=False)
    assert signalled == forced.tolist()
    np.testing.assert_array_equal(_decode(segment, 1, 500)[0], q)
    with pytest.raises(ValueError,
                       match="eco_init_sets has 3 entries, the eco list has 59"):
        _encode(q, 1, 500, eco_init_sets=np.zeros(3, dtype=np.uint8))


def test_param_opt_does_not_cost_more_than_all_zero_init():
    q = _core.quantize(_gaussian(64 * 64, seed=7), -44, 2, True)

    tuned = _encode(q, 64, 64, qp=-44, dq=True, param_opt=True)
    plain = _encode(q, 64, 64, qp=-44, dq=True, param_opt=False)

    assert len(tuned) <= len(plain)


# Error handling on untrusted segments.

@pytest.fixture(scope="module")
def dq_segment():
    q = _core.quantize(_gaussian(8 * 33, seed=8), -38, 2, True)
    return q, _encode(q, 8, 33, qp=-38, dq=True)


def test_truncated_segment_raises_with_byte_offset(dq_segment):
    _, segment = dq_segment
    for cut in range(0, len(segment)):
        with pytest.raises(ValueError, match=r"byte offset \d+"):
            _decode(segment[:cut], 8, 33, dq=True)


def test_trailing_bytes_are_not_consumed(dq_segment):
    q, segment = dq_segment

    decoded, _, consumed_bytes = _decode(segment + b"\x00\xff", 8, 33, dq=True)

    assert consumed_bytes == len(segment)
    np.testing.assert_array_equal(decoded, q)


def test_corrupted_segments_raise_or_decode_without_crashing(dq_segment):
    # Every single-byte corruption either fails cleanly with ValueError or
    # decodes to some values; it never crashes or reads out of bounds.
    _, segment = dq_segment
    rng = np.random.default_rng(9)
    failures = 0
    for trial in range(300):
        corrupted = bytearray(segment)
        corrupted[rng.integers(len(segment))] ^= int(rng.integers(1, 256))
        try:
            _decode(bytes(corrupted), 8, 33, dq=True)
        except ValueError:
            failures += 1
    assert failures > 0


def test_missing_terminate_bin_is_reported():
    # All-ones data never terminates within 2 bytes: the decoder runs out of data.
    with pytest.raises(ValueError, match="(terminate bin missing|data ends early)"):
        _decode(b"\xff\xff", 1, 1)


def test_bad_stop_bit_pattern_is_reported():
    q = np.array([5, -3, 0, 1], dtype=np.int32)
    segment = bytearray(_encode(q, 1, 4, row_skipping=False))
    segment[-1] |= 0x01 if segment[-1] & 0x01 == 0 and segment[-1] != 0x01 else 0

    if bytes(segment) != _encode(q, 1, 4):
        with pytest.raises(ValueError, match="(stop bit|padding|terminate)"):
            _decode(bytes(segment), 1, 4)


def test_shape_too_large_for_the_data_is_rejected_before_allocating():
    # 16 bytes hold at most 177 * 129 = 22833 bins: one per element of a
    # 1-D tensor, one per row when rows can be skipped.
    with pytest.raises(ValueError,
                       match=r"16-byte segment cannot hold 1000000 elements"):
        _decode(b"\x00" * 16, 1, 1_000_000)
    with pytest.raises(ValueError, match=r"16-byte segment cannot hold 30000 rows"):
        _decode(b"\x00" * 16, 30_000, 2)
    # A big all-zero matrix with skipped rows is legitimately tiny.
    zeros = np.zeros(20_000 * 50, dtype=np.int32)
    segment = _encode(zeros, 20_000, 50)
    assert len(segment) < 100
    np.testing.assert_array_equal(_decode(segment, 20_000, 50)[0], zeros)


def test_oversized_shape_is_rejected_before_allocating():
    with pytest.raises(ValueError, match=r"height\*width = 65536\*65536 exceeds"):
        _decode(b"\x00" * 16, 65536, 65536)
    with pytest.raises(ValueError, match="height and width must be >= 0"):
        _decode(b"\x00" * 16, -1, 5)


class _ReferenceEncoder:
    """Tiny pure-Python HEVC-style arithmetic encoder with NNC contexts, used
    only to craft segments that the C++ encoder refuses to write."""

    def __init__(self):
        tables = _core.tables()
        self.rlps = tables["rlps_table"]
        self.curve = tables["adaptation_curve"]
        self.init_sets = tables["init_sets"]
        self.low, self.range, self.bits_left = 0, 510, 23
        self.buffered, self.num_buffered, self.out = 0xFF, 0, bytearray()

    def context(self):
        sh0, sh1, p0, f0 = self.init_sets[0]
        return {"f": f0, "s": p0 - 16 * f0, "af": sh0 + 4, "as": sh1}

    def bin(self, value, ctx):
        p = ctx["s"] + 16 * ctx["f"]
        lps = self.rlps[32 * ((self.range >> 5) & 7) + abs(p >> 7)]
        self.range -= lps
        if value != (1 if p >= 0 else 0):
            shift = 0
            while (lps << shift) < 256:
                shift += 1
            self.low = (self.low + self.range) << shift
            self.range = lps << shift
            self.bits_left -= shift
        elif self.range < 256:
            self.low <<= 1
            self.range <<= 1
            self.bits_left -= 1
        c = self.curve
        if value:
            ctx["f"] += c[16 + (ctx["f"] >> 3)] >> ctx["af"]
            ctx["s"] += c[16 + (ctx["s"] >> 7)] >> ctx["as"]
        else:
            ctx["f"] -= c[16 + ((-ctx["f"]) >> 3)] >> ctx["af"]
            ctx["s"] -= c[16 + ((-ctx["s"]) >> 7)] >> ctx["as"]
        self._write()

    def bypass(self, value):
        self.low = (self.low << 1) + (self.range if value else 0)
        self.bits_left -= 1
        self._write()

    def _write(self):
        if self.bits_left >= 12:
            return
        lead = self.low >> (24 - self.bits_left)
        self.bits_left += 8
        self.low &= 0xFFFFFFFF >> self.bits_left
        if lead == 0xFF:
            self.num_buffered += 1
        elif self.num_buffered:
            carry = lead >> 8
            self.out.append((self.buffered + carry) & 0xFF)
            self.out += bytes([(0xFF + carry) & 0xFF]) * (self.num_buffered - 1)
            self.num_buffered, self.buffered = 1, lead & 0xFF
        else:
            self.num_buffered, self.buffered = 1, lead & 0xFF

    def finish(self):
        self.range -= 2
        self.low = (self.low + self.range) << 7
        self.bits_left -= 7
        self._write()
        if self.low >> (32 - self.bits_left):
            self.out.append((self.buffered + 1) & 0xFF)
            self.out += b"\x00" * (self.num_buffered - 1)
            self.low -= 1 << (32 - self.bits_left)
        else:
            if self.num_buffered:
                self.out.append(self.buffered)
            self.out += b"\xff" * (self.num_buffered - 1)
        num_tail_bits = 24 - self.bits_left
        tail = (((self.low >> 8) << 1) | 1)
        num_bits = num_tail_bits + 1
        pad = (8 - num_bits % 8) % 8
        tail <<= pad
        num_bits += pad
        self.out += tail.to_bytes(num_bits // 8, "big")
        return bytes(self.out)


def _int_segment_with_one_level(magnitude: int, negative: bool = False,
                                num_eco_flags: int = 59) -> bytes:
    """Segment without qp bins, all eco flags 0 (59 for URQ, 80 for DQ) and
    one level of the given magnitude."""
    enc = _ReferenceEncoder()
    contexts = [enc.context() for _ in range(134)]
    for _ in range(num_eco_flags):
        enc.bin(0, contexts[131])
    enc.bin(1, contexts[0])
    enc.bin(1 if negative else 0, contexts[48])
    for j in range(11):
        enc.bin(1, contexts[53 + 2 * j + (1 if negative else 0)])
    remainder = magnitude - 12
    prefix_ones = 0
    while prefix_ones < 31 and remainder >= (2 << prefix_ones) - 1:
        enc.bin(1, contexts[97 + prefix_ones])
        prefix_ones += 1
    if prefix_ones < 31:
        enc.bin(0, contexts[97 + prefix_ones])
    suffix = remainder - ((1 << prefix_ones) - 1)
    for i in reversed(range(prefix_ones)):
        enc.bypass((suffix >> i) & 1)
    return enc.finish()


def test_python_reference_encoder_agrees_with_core():
    for magnitude in (12, 13, 1000, 2**31 - 1):
        crafted = _int_segment_with_one_level(magnitude)
        expected = _encode(np.array([magnitude], dtype=np.int32), 1, 1, qp=None,
                           param_opt=False)
        assert crafted == expected


@pytest.mark.parametrize("magnitude,negative", [
    (2**31, False), (2**31 + 1, True), (2**32 + 10, False)])
def test_eg0_remainder_overflow_is_rejected(magnitude, negative):
    segment = _int_segment_with_one_level(magnitude, negative)

    with pytest.raises(ValueError,
                       match=f"level magnitude {magnitude} .*overflows int32"):
        _decode(segment, 1, 1, has_qp=False)


def test_most_negative_int32_level_decodes():
    segment = _int_segment_with_one_level(2**31, negative=True)

    assert _decode(segment, 1, 1, has_qp=False)[0].tolist() == [-(2**31)]


def test_dq_index_overflow_is_rejected():
    # DQ in state 0 reconstructs q = 2k: k = 2^30 - 1 fits, k = 2^30 does not.
    fits = _int_segment_with_one_level(2**30 - 1, num_eco_flags=80)
    overflows = _int_segment_with_one_level(2**30, num_eco_flags=80)

    assert _decode(fits, 1, 1, has_qp=False, dq=True)[0].tolist() == [2**31 - 2]
    with pytest.raises(ValueError,
                       match="DQ index 2147483648 at position 0 .*overflows"):
        _decode(overflows, 1, 1, has_qp=False, dq=True)


def test_wrong_dtype_is_rejected_at_the_boundary():
    with pytest.raises(TypeError):
        _core.encode_segment(np.zeros(4, dtype=np.int64), 2, 2, qp=0, qp_density=2,
                             dq=False, hdsp_flag_present=False, row_skipping=False,
                             param_opt=False)
    with pytest.raises(ValueError,
                       match="q has 3 elements, expected height\\*width = 4"):
        _encode(np.zeros(3, dtype=np.int32), 2, 2)


def test_decode_accepts_bytes_like_objects(dq_segment):
    q, segment = dq_segment

    for data in (segment, bytearray(segment), memoryview(segment),
                 np.frombuffer(segment, dtype=np.uint8)):
        np.testing.assert_array_equal(_decode(data, 8, 33, dq=True)[0], q)


def test_threads_encode_concurrently_with_serial_results():
    tensors = [_core.quantize(_gaussian(64 * 257, seed=20 + i), -40, 2, True)
               for i in range(8)]
    serial = [_encode(q, 64, 257, qp=-40, dq=True) for q in tensors]
    results = [None] * len(tensors)

    def work(index):
        for _ in range(3):
            results[index] = _encode(tensors[index], 64, 257, qp=-40, dq=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(tensors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == serial


def test_eco_estimation_prefix_is_configurable():
    # First 10 rows near zero, the rest large: a 10-row estimate sees other
    # statistics than the whole tensor, yet every choice decodes.
    x = _gaussian((100, 64), seed=40, scale=0.3)
    x[:10] *= 0.001
    q = _core.quantize(x.reshape(-1), -32, 2, False)

    prefix_sets = _core.choose_eco_init_sets(q, 100, 64, dq=False, row_skipping=False,
                                             eco_max_positions=640)
    full_sets = _core.choose_eco_init_sets(q, 100, 64, dq=False, row_skipping=False,
                                           eco_max_positions=0)
    default_sets = _core.choose_eco_init_sets(q, 100, 64, dq=False, row_skipping=False)

    assert prefix_sets != full_sets
    assert default_sets == full_sets  # 6400 positions < the 65536 default
    for limit in (640, 0):
        segment = _encode(q, 100, 64, row_skipping=False, eco_max_positions=limit)
        assert _core.decode_eco_init_sets(segment, 100, 64, has_qp=True, qp_density=2,
                                          dq=False, hdsp_flag_present=False) == (
            prefix_sets if limit else full_sets)
        np.testing.assert_array_equal(_decode(segment, 100, 64)[0], q)


def test_eco_from_levels_beats_nncodec_choice_under_dq():
    # NNCodec estimates the DQ eco choice from q instead of the coded levels;
    # estimating from the levels gives smaller segments that still decode.
    qs = [_core.quantize(_gaussian(10000, seed=50 + i), -20, 2, True) for i in range(10)]
    totals = {}
    for from_levels in (False, True):
        segments = [_encode(q, 100, 100, qp=-20, dq=True, eco_from_levels=from_levels)
                    for q in qs]
        for q, segment in zip(qs, segments):
            np.testing.assert_array_equal(_decode(segment, 100, 100, dq=True)[0], q)
        totals[from_levels] = sum(len(s) for s in segments)

    assert totals[True] < totals[False]


def test_eco_from_levels_changes_nothing_without_dq():
    q = _core.quantize(_gaussian(5000, seed=60), -26, 2, False)

    assert _encode(q, 50, 100, eco_from_levels=True) == _encode(q, 50, 100)
