"""Block scans with CABAC entry points (nnc-format §3.5, §3.7, quirk Q3).

NNCodec 2.1.3 writes block scans through ``nnc.compress(scan_order=k)``; the
vectors in tests/vectors_block_scan (tools/make_block_scan_vectors.py) pin
what our decoder reads, and re-encoding NNCodec's own levels must give its
segment bytes and its entry points exactly. Live checks in both directions
are in test_interop_nncodec.py.
"""

from __future__ import annotations

import json
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
