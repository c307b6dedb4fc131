"""Live interoperability with the reference NNCodec 2.1.3, both directions.

Runs only where both packages import (the side venv of
scripts/setup_nncodec_venv.sh):

    .venv-nncodec/bin/python -m pytest -q -m nncodec tests/test_interop_nncodec.py

* our encoder -> NNCodec's decoder, over the conformance matrix of
  tests/vectors (same inputs and options), TCA sequences included: NNCodec's
  arrays equal our own reconstruction (``encode_with_reconstruction``), and
  NNCodec's advanced ``approx_param_base`` equals our encoder's ``BaseState``;
* both directions again on freshly drawn inputs and options (seeded):
  our random streams -> NNCodec, NNCodec's single streams and TCA sequences
  -> our decoder.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from conftest import (
    assert_bit_exact,
    codec_options,
    import_nncodec_compression,
    load_manifest,
    load_vector_arrays,
    tensors_with_prefix,
)

pytestmark = pytest.mark.nncodec

compression = import_nncodec_compression()

import flwr_nncodec as nnc  # noqa: E402

MANIFEST = load_manifest()
VECTORS = MANIFEST["vectors"]
SINGLE = sorted(n for n, v in VECTORS.items() if v["kind"] == "single")
SEQUENCES = sorted(n for n, v in VECTORS.items() if v["kind"] == "sequence")


def empty_reference_base() -> dict:
    return {"parameters": {}, "put_node_depth": {}, "device_id": 0, "parameter_id": {}}


def nncodec_decode(bitstream: bytes, base: dict | None = None) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        decoded = compression.decompress(
            bytearray(bitstream), approx_param_base=base,
            update_base_param=base is not None)
    return dict(decoded)


def nncodec_encode(params: dict, base: dict | None = None, **kwargs) -> bytes:
    with contextlib.redirect_stdout(io.StringIO()):
        bitstream = compression.compress(
            params, bitstream_path=None, return_bitstream=True,
            approx_param_base=base, update_base_param=base is not None, **kwargs)
    return bytes(bitstream)


def assert_same_tensors(actual: dict, expected: dict, names, where: str):
    """``actual`` holds exactly ``names`` in order, each bit-exact to ``expected``."""
    assert list(actual) == list(names), f"{where}: decoded names {list(actual)}"
    for name in names:
        assert_bit_exact(actual[name], expected[name], f"{where}: {name!r}")


def assert_base_like_reference(ours: nnc.BaseState, reference: dict, where: str):
    assert int(ours.device_id) == int(reference["device_id"]), f"{where}: device_id"
    assert {k: int(v) for k, v in ours.put_node_depth.items()} == \
        {k: int(v) for k, v in reference["put_node_depth"].items()}, where
    assert {k: int(v) for k, v in ours.parameter_id.items()} == \
        {k: int(v) for k, v in reference["parameter_id"].items()}, where
    assert sorted(ours.parameters) == sorted(reference["parameters"]), where
    for name, q in reference["parameters"].items():
        assert_bit_exact(np.asarray(ours.parameters[name]), np.asarray(q, np.int32),
                         f"{where}: base {name!r}")


# --------------------------------------------------------------------------
# Our encoder -> NNCodec decoder, over the vector matrix


@pytest.mark.parametrize("name", SINGLE)
def test_nncodec_decodes_our_stream(name):
    entry = VECTORS[name]
    params = tensors_with_prefix(load_vector_arrays(entry), "in:")
    result = nnc.encode_with_reconstruction(params, **codec_options(entry))

    reference = nncodec_decode(result.bitstream)
    assert_same_tensors(reference, result.reconstruction, list(params), name)


@pytest.mark.parametrize("name", SEQUENCES)
def test_nncodec_decodes_our_sequence(name):
    entry = VECTORS[name]
    arrays = load_vector_arrays(entry)
    options = codec_options(entry)
    our_base = nnc.BaseState(device_id=0, parameters={}, put_node_depth={},
                             parameter_id={})
    reference_base = empty_reference_base()

    for index in range(len(entry["steps"])):
        where = f"{name} step {index}"
        params = tensors_with_prefix(arrays, f"s{index}:in:")
        result = nnc.encode_with_reconstruction(
            params, **options, base=our_base, update_base=True)

        reference = nncodec_decode(result.bitstream, reference_base)
        kept = [n for n in params if n in reference]
        assert_same_tensors(reference, result.reconstruction, kept, where)
        for tensor in set(params) - set(reference):
            assert not np.any(result.reconstruction.get(tensor, 0)), (
                f"{where}: NNCodec got no {tensor!r}, ours is not all zero")
        assert_base_like_reference(our_base, reference_base, where)


# --------------------------------------------------------------------------
# NNCodec encoder -> our decoder, freshly drawn inputs


def random_model(rng: np.random.Generator) -> dict:
    shapes = [(int(rng.integers(1, 12)), int(rng.integers(1, 20))),
              (int(rng.integers(1, 40)),),
              (int(rng.integers(1, 5)), int(rng.integers(1, 4)), 3, 3)]
    params = {}
    for index, shape in enumerate(shapes[: int(rng.integers(1, 4))]):
        scale = float(10 ** rng.uniform(-3, 0))
        value = rng.normal(0.0, scale, shape).astype(np.float32)
        if value.ndim > 1 and rng.random() < 0.5:
            value[rng.random(shape[0]) < 0.4] = 0.0
        params[f"t{index}.{len(shape)}d"] = value
    if rng.random() < 0.2:
        params["ints"] = rng.integers(-1000, 1000, (3, 4)).astype(np.int32)
    return params


def random_nncodec_options(rng: np.random.Generator, *, extras: bool = False) -> dict:
    options = {
        "qp": int(rng.integers(-64, -8)),
        "nonweight_qp": int(rng.integers(-80, -20)),
        "use_dq": bool(rng.random() < 0.5),
        "row_skipping": bool(rng.random() < 0.5),
        "param_opt": bool(rng.random() < 0.8),
    }
    if extras:
        draw = rng.random()
        if draw < 0.2:
            options["int_quant_bw"] = int(rng.choice([4, 8]))
        elif draw < 0.4:
            options["codebook_mode"] = int(rng.choice([1, 2]))
        elif draw < 0.5:
            options["lambda_scale"] = float(rng.uniform(0.5, 2.0))
    return options


@pytest.mark.parametrize("seed", range(60))
def test_we_decode_nncodec_stream(seed):
    rng = np.random.default_rng(seed)
    params = random_model(rng)
    options = random_nncodec_options(rng, extras=True)
    bitstream = nncodec_encode(params, **options)

    reference = nncodec_decode(bitstream)
    ours = nnc.decode(bitstream)
    assert_same_tensors(ours, reference, list(reference), f"seed {seed} {options}")


def random_codec_options(rng: np.random.Generator) -> dict:
    """flwr-nncodec options drawn like ``random_nncodec_options(extras=True)``."""
    drawn = random_nncodec_options(rng, extras=True)
    options = {k: drawn[k] for k in
               ("qp", "nonweight_qp", "use_dq", "row_skipping", "param_opt")}
    if "int_quant_bw" in drawn:
        options["bitdepth"] = drawn["int_quant_bw"]
    if "codebook_mode" in drawn:
        options["approx_method"] = "codebook"
    if "lambda_scale" in drawn:
        options["lambda_scale"] = drawn["lambda_scale"]
    return options


@pytest.mark.parametrize("seed", range(40))
def test_nncodec_decodes_our_random_stream(seed):
    rng = np.random.default_rng(500 + seed)
    params = random_model(rng)
    options = random_codec_options(rng)
    result = nnc.encode_with_reconstruction(params, **options)

    reference = nncodec_decode(result.bitstream)
    assert_same_tensors(reference, result.reconstruction, list(params),
                        f"seed {seed} {options}")


@pytest.mark.parametrize("seed", range(6))
def test_we_decode_nncodec_tca_sequence(seed):
    rng = np.random.default_rng(100 + seed)
    options = {**random_nncodec_options(rng), "compress_differences": True,
               "tca": bool(seed % 3 != 2), "device_id": int(rng.integers(0, 5))}
    shapes = {"a": (6, 9), "b": (9,), "c": (2, 3, 2, 2)}
    encoder_base = empty_reference_base()
    reference_base = empty_reference_base()
    our_base = nnc.BaseState(device_id=0, parameters={}, put_node_depth={},
                             parameter_id={})

    for step in range(4):
        where = f"seed {seed} step {step} {options}"
        params = {k: rng.normal(0, 0.03, s).astype(np.float32)
                  for k, s in shapes.items()}
        if step == 1:
            params["b"][:] = 0.0
        bitstream = nncodec_encode(params, encoder_base, **options)

        reference = nncodec_decode(bitstream, reference_base)
        ours = nnc.decode(bitstream, base=our_base, update_base=True)
        assert_same_tensors(ours, reference, list(reference), where)
        assert_base_like_reference(our_base, reference_base, where)


# --------------------------------------------------------------------------
# Codebook streams with any size and zero offset, with and without TCA
#
# The codebook eco list (EG prefix entries, TCA gt pairs) depends on the
# largest |index - zero offset| of the tensor; NNCodec rejected some of our
# streams ("Terminating Bin not received!") when that list was off by one.
# The segments are built directly (the encoder's own codebook choice rarely
# picks large codebooks or odd zero offsets).

from flwr_nncodec import codec as _codec, hls  # noqa: E402
from flwr_nncodec.options import make_options  # noqa: E402
from flwr_nncodec.quantization import CodedTensor  # noqa: E402

CODEBOOK_QP = -36


def codebook_stream(name, indices, dims, codebook, *, base=None, tca=False,
                    device_id=0) -> bytes:
    """A one-NDU stream coding int32 ``indices`` into ``codebook`` at CODEBOOK_QP."""
    differential = base is not None
    opts = make_options(qp=CODEBOOK_QP, use_dq=False, compress_differences=differential,
                        tca=tca, base=base, device_id=device_id)
    coded = CodedTensor(hls.PT_FLOAT, dims, indices, CODEBOOK_QP, 2, False,
                        codebook=codebook)
    header = _codec._ndu_header(name, coded, 0, opts)
    assert bool(header.temporal_context_modeling_flag) == tca
    tca_base = _codec._tca_base_for(name, header, base, coded)
    segment = _codec._encode_segment(coded, opts, header, tca_base)
    mps = hls.ModelParameterSet(parent_signalling_enabled_flag=int(differential),
                                qp_density=2)
    return (hls.write_start_unit() + hls.write_mps(mps) + hls.write_topology()
            + hls.write_ndu(header, mps, segment))


def codebook_case(seed: int):
    """(dims, codebook, indices) drawn over sizes 1..40 and every zero offset.

    Seed 0 is the reported case: 5x8 tensor, 17 entries, zero offset 4.
    """
    rng = np.random.default_rng(700 + seed)
    if seed == 0:
        dims, size, zero = (5, 8), 17, 4
    else:
        dims = ((int(rng.integers(1, 9)), int(rng.integers(1, 13))) if seed % 4
                else (int(rng.integers(1, 60)),))
        size = int(rng.integers(1, 41))
        zero = int(rng.integers(0, size))
    entries = np.sort(rng.choice(np.arange(-200, 201), size, replace=False))
    codebook = hls.Codebook(int(rng.integers(0, 4)), zero,
                            tuple(int(v) for v in entries))
    count = int(np.prod(dims))
    # Mix uniform indices with ones at both ends, so the largest |index - zero|
    # (which sizes the eco list) is often reached.
    indices = rng.integers(0, size, count)
    ends = rng.random(count)
    indices[ends < 0.15] = 0
    indices[ends > 0.85] = size - 1
    return dims, codebook, np.ascontiguousarray(indices, dtype=np.int32)


def expected_codebook_values(codebook, indices, dims) -> np.ndarray:
    step = np.float32(2.0 ** (CODEBOOK_QP / 4))
    values = np.asarray(codebook.values, np.float32)[indices] * step
    return values.astype(np.float32).reshape(dims)


@pytest.mark.parametrize("seed", range(32))
def test_nncodec_decodes_our_codebook_streams(seed):
    dims, codebook, indices = codebook_case(seed)
    stream = codebook_stream("cb", indices, dims, codebook)

    expected = expected_codebook_values(codebook, indices, dims)
    where = f"seed {seed}: dims {dims}, {len(codebook.values)} entries, zero " \
            f"offset {codebook.zero_offset}"
    assert_bit_exact(nnc.decode(stream)["cb"], expected, where + " (ours)")
    assert_bit_exact(nncodec_decode(stream)["cb"], expected, where + " (NNCodec)")


@pytest.mark.parametrize("seed", range(32))
def test_nncodec_decodes_our_codebook_streams_with_tca(seed):
    dims, codebook, indices = codebook_case(1000 + seed)
    rng = np.random.default_rng(seed)
    our_base = nnc.BaseState(device_id=0, parameters={}, put_node_depth={},
                             parameter_id={})
    reference_base = empty_reference_base()
    # Step 0: a uniform update, which both bases record.
    first = {"cb": rng.normal(0, 0.05, dims).astype(np.float32)}
    stream = nnc.encode(first, compress_differences=True, tca=True, base=our_base,
                        update_base=True, device_id=2)
    nncodec_decode(stream, reference_base)
    assert_base_like_reference(our_base, reference_base, f"seed {seed} step 0")

    # Step 1: a codebook update coded against that base.
    stream = codebook_stream("cb", indices, dims, codebook, base=our_base, tca=True,
                             device_id=2)
    expected = expected_codebook_values(codebook, indices, dims)
    where = f"seed {seed}: dims {dims}, {len(codebook.values)} entries, zero " \
            f"offset {codebook.zero_offset}, TCA"
    assert_bit_exact(nnc.decode(stream, base=our_base.copy())["cb"], expected,
                     where + " (ours)")
    assert_bit_exact(nncodec_decode(stream, reference_base)["cb"], expected,
                     where + " (NNCodec)")


# --------------------------------------------------------------------------
# Block scans with entry points (scan_order 1..4), both directions
#
# NNCodec's decoder seeks to every entry point (it decodes the block rows
# from the last one backwards), so a wrong position, offset or DQ state in
# our cabac_entry_point_list shows up as a wrong reconstruction or an error.


def block_scan_model(rng: np.random.Generator) -> dict:
    """Matrices with several block rows, widths not always a multiple of 4
    or of the block size, some all-zero rows (row skipping, quirk Q3)."""
    params = {}
    for index in range(int(rng.integers(1, 4))):
        height = int(rng.integers(9, 150))
        width = int(rng.integers(2, 90))
        shape = (height, width) if rng.random() < 0.7 else (height, 2, width // 2 + 1)
        value = rng.normal(0.0, float(10 ** rng.uniform(-2.5, -1)), shape)
        value = value.astype(np.float32)
        if rng.random() < 0.6:
            value[rng.random(height) < 0.3] = 0.0
        params[f"m{index}"] = value
    params["bias"] = rng.normal(0.0, 0.01, (int(rng.integers(1, 30)),)).astype(
        np.float32)
    return params


@pytest.mark.parametrize("seed", range(40))
def test_nncodec_decodes_our_block_scan_stream(seed):
    rng = np.random.default_rng(3000 + seed)
    params = block_scan_model(rng)
    options = {
        "qp": int(rng.integers(-48, -20)),
        "use_dq": bool(rng.random() < 0.7),
        "row_skipping": bool(rng.random() < 0.7),
        "lambda_scale": float(rng.choice([0.0, 0.5, 1.5])),
        "scan_order": int(rng.integers(1, 5)),
    }
    result = nnc.encode_with_reconstruction(params, **options)
    scan_orders = {u.header.name: u.header.scan_order
                   for u in hls.parse_stream(result.bitstream).ndus}
    assert any(scan_orders.values()), f"seed {seed}: no block scan in {scan_orders}"

    reference = nncodec_decode(result.bitstream)
    assert_same_tensors(reference, result.reconstruction, list(params),
                        f"seed {seed} {options}")


@pytest.mark.parametrize(
    "shape,scan_order,use_dq,lambda_scale",
    [
        ((600, 500), 4, True, 0.5),
        ((520, 512), 1, True, 0.5),
        ((300, 300), 2, False, 0.5),
        ((700, 400), 3, True, 0.0),
    ],
)
def test_nncodec_decodes_our_large_block_scan(shape, scan_order, use_dq,
                                              lambda_scale):
    # Large enough for the parallel paths: levels coded in runs of block rows
    # (2**16 values and more) whose codes are added up, and from 2**18 values
    # the rate-aware DQ trellis in two runs of block rows.
    rng = np.random.default_rng(shape[0] + scan_order)
    weight = rng.normal(0.0, 0.02, shape).astype(np.float32)
    weight[rng.random(shape[0]) < 0.2] = 0.0  # skipped rows in several runs
    params = {"weight": weight}
    options = {"qp": -34, "use_dq": use_dq, "lambda_scale": lambda_scale,
               "scan_order": scan_order}
    result = nnc.encode_with_reconstruction(params, num_threads=2, **options)
    assert nnc.encode(params, num_threads=1, **options) == result.bitstream
    header = hls.parse_stream(result.bitstream).ndus[0].header
    assert len(header.entry_points) >= 4

    reference = nncodec_decode(result.bitstream)
    assert_same_tensors(reference, result.reconstruction, ["weight"],
                        f"{shape} {options}")


@pytest.mark.parametrize("seed", range(24))
def test_we_decode_nncodec_block_scan_stream(seed):
    rng = np.random.default_rng(4000 + seed)
    params = block_scan_model(rng)
    options = {**random_nncodec_options(rng), "scan_order": int(rng.integers(1, 5))}
    bitstream = nncodec_encode(params, **options)

    reference = nncodec_decode(bitstream)
    for num_threads in (1, 3):
        ours = nnc.decode(bitstream, num_threads=num_threads)
        assert_same_tensors(ours, reference, list(reference),
                            f"seed {seed} {options}, {num_threads} threads")


@pytest.mark.parametrize("seed", range(4))
def test_nncodec_decodes_our_block_scan_tca_sequence(seed):
    rng = np.random.default_rng(5000 + seed)
    shapes = {"a": (70, 24), "b": (33, 10)}
    our_base = nnc.BaseState(device_id=0, parameters={}, put_node_depth={},
                             parameter_id={})
    reference_base = empty_reference_base()
    for step in range(3):
        params = {k: rng.normal(0, 0.03, s).astype(np.float32)
                  for k, s in shapes.items()}
        result = nnc.encode_with_reconstruction(
            params, compress_differences=True, tca=True, base=our_base,
            update_base=True, scan_order=1 + seed % 4, qp=-36)
        reference = nncodec_decode(result.bitstream, reference_base)
        assert_same_tensors(reference, result.reconstruction,
                            list(result.reconstruction), f"seed {seed} step {step}")
        assert_base_like_reference(our_base, reference_base, f"seed {seed} step {step}")
