"""Block scans with CABAC entry points (nnc-format §3.5, §3.7, quirk Q3).

NNCodec 2.1.3 writes block scans through ``nnc.compress(scan_order=k)``; the
vectors in tests/vectors_block_scan (tools/make_block_scan_vectors.py) pin
what our decoder reads, and re-encoding NNCodec's own levels must give its
segment bytes and its entry points exactly. Live checks in both directions
are in test_interop_nncodec.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_bit_exact

import flwr_nncodec as nnc
from flwr_nncodec import _core, hls
from flwr_nncodec.codec import scan_order_for
from flwr_nncodec.errors import NNCFormatError
from flwr_nncodec.quantization import matrix_shape

VECTORS_DIR = Path(__file__).parent / "vectors_block_scan"
MANIFEST = json.loads((VECTORS_DIR / "manifest.json").read_text())
NAMES = sorted(MANIFEST["vectors"])


def vector(name: str) -> tuple[bytes, dict[str, np.ndarray]]:
    entry = MANIFEST["vectors"][name]
    stream = (VECTORS_DIR / entry["bitstream"]).read_bytes()
    with np.load(VECTORS_DIR / entry["arrays"], allow_pickle=False) as arrays:
        return stream, {key: arrays[key] for key in arrays.files}


def segment_args(unit: hls.ParsedUnit, mps: hls.ModelParameterSet) -> dict:
    header = unit.header
    return {
        "has_qp": True,
        "qp_density": mps.qp_density,
        "dq": bool(header.dq_flag),
        "hdsp_flag_present": False,
        "scan_order": header.scan_order,
        "entry_points": list(header.entry_points),
    }


@pytest.mark.parametrize("num_threads", [1, 2, 5])
@pytest.mark.parametrize("name", NAMES)
def test_we_decode_nncodec_block_scan_vector(name, num_threads):
    stream, arrays = vector(name)
    decoded = nnc.decode(stream, num_threads=num_threads)

    expected = {k[4:]: value for k, value in arrays.items() if k.startswith("out:")}
    assert list(decoded) == list(expected)
    for tensor, value in expected.items():
        assert_bit_exact(decoded[tensor], value, f"{name}: {tensor}")


def test_vectors_cover_block_scans_with_entry_points():
    seen = set()
    for name in NAMES:
        stream, _ = vector(name)
        for unit in hls.parse_stream(stream).ndus:
            header = unit.header
            seen.add((header.scan_order, bool(header.entry_points), header.dq_flag))
    with_entry_points = {(order, True, 1) for order in (1, 2, 3, 4)} | {(1, True, 0)}
    assert with_entry_points <= seen
    assert (4, False, 1) in seen  # one block row: scan_order 4, no entry points


@pytest.mark.parametrize("name", NAMES)
def test_reencoding_nncodec_levels_gives_its_segment_and_entry_points(name):
    stream, arrays = vector(name)
    parsed = hls.parse_stream(stream)
    for unit in parsed.ndus:
        header = unit.header
        height, width = matrix_shape(header.dims)
        segment = stream[unit.payload_offset : unit.offset + unit.size]
        args = segment_args(unit, parsed.mps)
        init_sets = _core.decode_eco_init_sets(
            np.frombuffer(segment, np.uint8), height, width, **args
        )
        q = arrays[f"q:{header.name}"].reshape(-1).astype(np.int32)

        ours, entry_points = _core.encode_segment_scan(
            q,
            height,
            width,
            qp=_core.decode_segment(
                np.frombuffer(segment, np.uint8), height, width, **args
            )[1],
            qp_density=parsed.mps.qp_density,
            dq=bool(header.dq_flag),
            hdsp_flag_present=False,
            row_skipping=MANIFEST["vectors"][name]["nncodec_kwargs"]["row_skipping"],
            param_opt=False,
            eco_init_sets=np.array(init_sets, np.uint8),
            scan_order=header.scan_order,
        )
        where = f"{name}: {header.name} scan_order {header.scan_order}"
        assert ours == segment, where
        assert [tuple(e) for e in entry_points] == list(header.entry_points), where


@pytest.mark.parametrize("name", NAMES)
def test_header_with_entry_points_rewrites_to_nncodec_bytes(name):
    stream, _ = vector(name)
    parsed = hls.parse_stream(stream)
    for unit in parsed.ndus:
        original = stream[unit.offset : unit.offset + unit.size]
        payload = stream[unit.payload_offset : unit.offset + unit.size]
        assert hls.write_ndu(unit.header, parsed.mps, payload) == original


# --------------------------------------------------------------------------
# Our encoder


def gaussian(shape, seed=0, std=0.02):
    return np.random.default_rng(seed).normal(0.0, std, shape).astype(np.float32)


@pytest.mark.parametrize("lambda_scale", [0.0, 0.5])
@pytest.mark.parametrize("use_dq", [True, False])
@pytest.mark.parametrize(
    "shape,scan_order",
    [((20, 20), 1), ((70, 30), 2), ((9, 4, 5), 1), ((130, 7), 3), ((257, 66), 4)],
)
def test_block_scan_round_trip_independent_of_threads(shape, scan_order, use_dq,
                                                      lambda_scale):
    x = gaussian(shape, seed=len(shape) + shape[0])
    x[[1, 5]] = 0.0  # row skipping, also where width % 4 != 0 (Q3)
    options = {"qp": -32, "use_dq": use_dq, "lambda_scale": lambda_scale,
               "scan_order": scan_order}
    result = nnc.encode_with_reconstruction({"w": x}, num_threads=1, **options)
    again = nnc.encode({"w": x}, num_threads=2, **options)
    assert again == result.bitstream

    header = hls.parse_stream(result.bitstream).ndus[0].header
    assert header.scan_order == scan_order
    assert len(header.entry_points) == -(-shape[0] // (4 << scan_order)) - 1
    for num_threads in (1, 2, 4):
        decoded = nnc.decode(result.bitstream, num_threads=num_threads)
        assert_bit_exact(decoded["w"], result.reconstruction["w"], f"{num_threads}")
    # Same quantiser, other order: the error stays that of the raster scan.
    raster = nnc.encode_with_reconstruction({"w": x}, **{**options, "scan_order": 0})
    mse = np.mean((result.reconstruction["w"] - x) ** 2)
    raster_mse = np.mean((raster.reconstruction["w"] - x) ** 2)
    assert 0.9 * raster_mse <= mse <= 1.1 * raster_mse


@pytest.mark.parametrize("shape,scan_order", [((1000, 300), 4), ((128, 2048), 4),
                                              ((515, 512), 1)])
def test_large_rate_aware_block_scan_in_two_runs_is_one_path(shape, scan_order):
    # From 2**18 values a rate-aware DQ block scan is quantised as two runs of
    # block rows (on two threads when allowed): the second starts in any
    # state, the first's last block row ends where the second's path starts.
    # (128, 2048) has two block rows, so the first run is that one row.
    x = gaussian(shape, seed=shape[0], std=0.02)
    options = {"qp": -32, "lambda_scale": 0.5, "scan_order": scan_order}
    result = nnc.encode_with_reconstruction({"w": x}, num_threads=1, **options)
    assert nnc.encode({"w": x}, num_threads=2, **options) == result.bitstream
    # encode_segment refuses an index of the wrong parity for its DQ state,
    # so a stream at all means one admissible path across the cut.
    decoded = nnc.decode(result.bitstream, num_threads=2)
    assert_bit_exact(decoded["w"], result.reconstruction["w"], "decode")

    # Against the minimum-MSE trellis in the same scan: fewer bytes for at
    # most 5 % more error.
    min_mse = nnc.encode_with_reconstruction({"w": x}, **{**options,
                                                          "lambda_scale": 0.0})
    mse = np.mean((result.reconstruction["w"] - x) ** 2)
    assert mse <= 1.05 * np.mean((min_mse.reconstruction["w"] - x) ** 2)
    assert len(result.bitstream) < len(min_mse.bitstream)


@pytest.mark.parametrize("zero_rows", [0, 200, 300, 999])
def test_eco_listed_during_the_trellis_gives_the_serial_choice(zero_rows):
    # On two threads the second trellis run lists the eco estimate's bins
    # while the first finishes, if the estimate's 65,536 coded positions lie
    # in the first run's block rows 0..6 (448 rows of 300 here). Leading
    # zero rows are skipped and push the prefix down: 200 zero rows leave
    # 74,400 coded positions there, 300 leave 44,400 (listed afterwards, as
    # on one thread), 999 leave none. Init sets and bytes must not change.
    x = gaussian((1000, 300), seed=7, std=0.02)
    x[:zero_rows] = 0.0
    options = {"qp": -32, "lambda_scale": 0.5, "scan_order": 4}

    one = nnc.encode_with_reconstruction({"w": x}, num_threads=1, **options)
    two = nnc.encode({"w": x}, num_threads=2, **options)

    assert two == one.bitstream
    unit = hls.parse_stream(two).ndus[0]
    header = unit.header
    q = one.levels["w"].reshape(-1)
    segment = np.frombuffer(two, np.uint8, unit.payload_size, unit.payload_offset)
    signalled = _core.decode_eco_init_sets(
        segment, 1000, 300, has_qp=True, qp_density=2, dq=True,
        hdsp_flag_present=False, scan_order=4, entry_points=list(header.entry_points))
    chosen = _core.choose_eco_init_sets(q, 1000, 300, dq=True, row_skipping=True,
                                        scan_order=4)
    assert list(signalled) == list(chosen)
    assert any(chosen)  # the choice is not trivially all init set 0


@pytest.mark.parametrize(
    "shape,scan_order,dq,zero_rows,tca,codebook_size",
    [
        ((300, 300), 2, True, (), False, 0),  # 19 block rows, 90,000 values
        ((256, 256), 4, False, (3, 70), False, 0),  # 4 block rows, skipped rows
        ((1000, 66), 1, False, (0, 1, 999), True, 0),  # width % 4 != 0, TCA
        ((513, 130), 3, False, (5,), False, 9),  # codebook levels
        ((130, 1024), 4, False, (), False, 0),  # 3 block rows, the last short
    ],
)
def test_levels_coded_in_runs_give_the_serial_bytes(shape, scan_order, dq, zero_rows,
                                                    tca, codebook_size):
    # From 2**16 values a block scan's levels are coded in runs of block rows
    # on several threads, fresh encoders at range 256 whose exact codes add
    # up to the stream: bytes and entry points must equal the serial coder's
    # (which reproduces NNCodec's, test_reencoding_nncodec_levels_...).
    height, width = shape
    rng = np.random.default_rng(height + width)
    if codebook_size:
        q = rng.integers(0, codebook_size, height * width).astype(np.int32)
        q[q == 4] = 2  # skewed towards the zero offset 2
    else:
        q = np.round(rng.laplace(0.0, 3.0, height * width)).astype(np.int32)
    if dq:
        x = gaussian(shape, seed=height, std=0.02)
        x[list(zero_rows), :] = 0.0
        result = nnc.encode_with_reconstruction({"w": x}, qp=-32,
                                                scan_order=scan_order)
        q = result.reconstruction["w"] / _core.step_size(-32, 2)
        q = np.round(q).astype(np.int32).reshape(-1)
    q.reshape(shape)[list(zero_rows), :] = 2 if codebook_size else 0
    base = rng.integers(-3, 4, height * width).astype(np.int32) if tca else None
    options = dict(qp=-32, qp_density=2, dq=dq, hdsp_flag_present=tca,
                   row_skipping=True, param_opt=True, tca_base=base,
                   codebook_size=codebook_size,
                   codebook_zero_offset=2 if codebook_size else 0,
                   scan_order=scan_order)
    serial = _core.encode_segment_scan(q, height, width, num_threads=1, **options)
    for num_threads in (2, 3, 7):
        assert _core.encode_segment_scan(q, height, width, num_threads=num_threads,
                                         **options) == serial, num_threads

    segment, entry_points = serial
    decoded = _core.decode_segment(
        np.frombuffer(segment, np.uint8), height, width, has_qp=True, qp_density=2,
        dq=dq, hdsp_flag_present=tca, tca_base=base, codebook_size=codebook_size,
        codebook_zero_offset=2 if codebook_size else 0, scan_order=scan_order,
        entry_points=entry_points, num_threads=2)
    np.testing.assert_array_equal(decoded[0], q)


def test_a_bad_dq_index_is_named_the_same_from_any_run():
    x = gaussian((300, 300), seed=3)
    result = nnc.encode_with_reconstruction({"w": x}, qp=-32, scan_order=2)
    q = np.round(result.reconstruction["w"] / _core.step_size(-32, 2))
    q = q.astype(np.int32).reshape(-1)
    q[250 * 300 + 7] += 1  # wrong parity in the last run's block rows
    options = dict(qp=-32, qp_density=2, dq=True, hdsp_flag_present=False,
                   row_skipping=True, param_opt=False, scan_order=2)
    messages = set()
    for num_threads in (1, 2, 4):
        with pytest.raises(ValueError, match="is not admissible in DQ state") as error:
            _core.encode_segment_scan(q, 300, 300, num_threads=num_threads, **options)
        messages.add(str(error.value))
    assert len(messages) == 1, messages


def test_a_one_row_matrix_falls_back_to_raster():
    x = gaussian((1, 500))
    stream = nnc.encode({"w": x}, scan_order=3)
    assert hls.parse_stream(stream).ndus[0].header.scan_order == 0


def test_scan_order_applies_only_to_matrices():
    assert scan_order_for((1000, 1000), 4) == 4
    assert scan_order_for((9, 4, 5), 1) == 1
    assert scan_order_for((4096,), 3) == 0
    assert scan_order_for((1000, 1), 2) == 0
    assert scan_order_for((1, 1000), 2) == 0
    assert scan_order_for((100, 10), 0) == 0


def test_default_encoder_keeps_nncodec_raster_scan():
    x = gaussian((600, 500))
    header = hls.parse_stream(nnc.encode({"w": x})).ndus[0].header
    assert header.scan_order == 0 and header.entry_points == ()


def test_scan_order_option_is_checked():
    with pytest.raises(ValueError, match="scan_order = 5 is outside the range 0..4"):
        nnc.encode({"w": gaussian((10, 10))}, scan_order=5)


# --------------------------------------------------------------------------
# Bad entry points


def block_scan_stream(dq=True):
    x = gaussian((96, 40), seed=3)
    return nnc.encode({"w": x}, qp=-30, use_dq=dq, scan_order=2)  # 6 block rows


def with_header(stream: bytes, **changes) -> bytes:
    parsed = hls.parse_stream(stream)
    out = []
    for unit in parsed.units:
        data = stream[unit.offset : unit.offset + unit.size]
        if unit.unit_type == hls.NNR_NDU:
            payload = stream[unit.payload_offset : unit.offset + unit.size]
            data = hls.write_ndu(replace(unit.header, **changes), parsed.mps, payload)
        out.append(data)
    return b"".join(out)


@pytest.mark.parametrize("num_threads", [1, 3])
@pytest.mark.parametrize("field,change", [(0, 1), (0, -1), (1, 1), (2, 1)])
def test_a_wrong_entry_point_is_named(field, change, num_threads):
    stream = block_scan_stream()
    entries = [list(e) for e in hls.parse_stream(stream).ndus[0].header.entry_points]
    entries[2][field] = (entries[2][field] + change) % (256 if field == 1 else 8) \
        if field else entries[2][field] + change
    bad = with_header(stream, entry_points=tuple(tuple(e) for e in entries))

    with pytest.raises(NNCFormatError, match=r"entry point [23]"):
        nnc.decode(bad, num_threads=num_threads)


def test_entry_point_beyond_the_segment_is_refused():
    stream = block_scan_stream()
    entries = list(hls.parse_stream(stream).ndus[0].header.entry_points)
    entries[-1] = (entries[-1][0] + 10**6, entries[-1][1], entries[-1][2])
    bad = with_header(stream, entry_points=tuple(entries))
    with pytest.raises(NNCFormatError, match="lies beyond"):
        nnc.decode(bad, num_threads=2)


@pytest.mark.parametrize("field,value,message", [
    (0, -1, "delta_bits -1 is negative or too large"),
    (1, -3, "offset -3 is negative or too large"),
    (1, 2**32, "offset 4294967296 is negative or too large"),
    (2, -2**40, "dq_state -1099511627776 is negative or too large"),
    (1, 300, "has offset 300 and DQ state"),  # fits the type: the core names it
    (2, 8, "and DQ state 8"),
])
def test_core_names_a_bad_entry_point_integer(field, value, message):
    # Negative integers used to fail nanobind's conversion with a TypeError.
    stream = block_scan_stream()
    parsed = hls.parse_stream(stream)
    unit = parsed.ndus[0]
    height, width = matrix_shape(unit.header.dims)
    args = segment_args(unit, parsed.mps)
    entries = [list(e) for e in args["entry_points"]]
    entries[1][field] = value
    args["entry_points"] = [tuple(e) for e in entries]
    segment = np.frombuffer(stream, np.uint8, unit.payload_size, unit.payload_offset)

    with pytest.raises(ValueError, match=re.escape(message)):
        _core.decode_segment(segment, height, width, **args)


def test_entry_point_count_must_match_the_block_rows():
    stream = block_scan_stream()
    entries = hls.parse_stream(stream).ndus[0].header.entry_points
    with pytest.raises(ValueError, match="needs 5 entry points, got 4"):
        with_header(stream, entry_points=entries[:4])


def test_reserved_scan_order_is_refused():
    stream = block_scan_stream(dq=False)
    bad = with_header(stream, scan_order=5, entry_points=())
    with pytest.raises(NNCFormatError, match="scan_order 5 is reserved"):
        nnc.decode(bad)


def test_truncated_block_scan_stream_fails_cleanly_at_every_length():
    stream = block_scan_stream()
    for length in range(len(stream) - 1, len(stream) - 400, -7):
        for num_threads in (1, 2):
            with pytest.raises(NNCFormatError):
                nnc.decode(stream[:length], num_threads=num_threads)
