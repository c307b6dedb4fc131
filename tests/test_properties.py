"""Property tests (hypothesis) over shapes, dtypes, options and header fields.

The default run draws 60 examples per property; set the environment variable
``NNC_HYPOTHESIS_EXAMPLES`` (e.g. 2000) for a longer search.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import flwr_nncodec as nnc
from flwr_nncodec import hls
from flwr_nncodec.bitio import BitReader, BitWriter

SETTINGS = settings(
    max_examples=int(os.environ.get("NNC_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

DTYPES = st.sampled_from(
    [
        np.float16,
        np.float32,
        np.float64,
        np.int8,
        np.int32,
        np.int64,
        np.uint16,
        np.bool_,
    ]
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


@st.composite
def tensors(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(SHAPES)
    if dtype.kind == "f":
        elements = st.floats(-4.0, 4.0, width=16 if dtype.itemsize == 2 else 32)
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(
            max(int(info.min), -(2**31)), min(int(info.max), 2**31 - 1)
        )
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def encoder_options(draw):
    options = {
        "qp": draw(st.integers(-64, -8)),
        "nonweight_qp": draw(st.one_of(st.none(), st.integers(-90, -20))),
        "use_dq": draw(st.booleans()),
        "row_skipping": draw(st.booleans()),
        "param_opt": draw(st.booleans()),
        "compress_differences": draw(st.booleans()),
        "approx_method": draw(st.sampled_from(["uniform", "uniform", "codebook"])),
        "bitdepth": draw(st.one_of(st.none(), st.integers(2, 12))),
        "sparsity": draw(st.sampled_from([0.0, 0.0, 0.5])),
        "device_id": draw(st.integers(0, 70)),
    }
    return options


@SETTINGS
@given(
    params=st.dictionaries(
        st.text(min_size=0, max_size=8).filter(lambda s: "\x00" not in s),
        tensors(),
        min_size=1,
        max_size=4,
    ),
    options=encoder_options(),
)
def test_decode_returns_exactly_the_encoders_reconstruction(params, options):
    result = nnc.encode_with_reconstruction(params, **options)
    decoded = nnc.decode(result.bitstream)

    assert list(decoded) == [n for n in params if n not in result.dropped]
    for name, value in decoded.items():
        expected = result.reconstruction[name]
        assert value.dtype == expected.dtype and value.shape == expected.shape
        assert np.array_equal(value, expected)
        source = np.asarray(params[name])
        assert value.shape == (source.shape or (1,))
        if source.dtype.kind in "iub":
            assert value.dtype == np.int32
            assert np.array_equal(value, source.reshape(value.shape).astype(np.int64))
        else:
            assert value.dtype == np.float32

    units = nnc.inspect(result.bitstream)
    assert sum(u["size"] for u in units) == len(result.bitstream)
    assert [u["name"] for u in units if u["type"] == "NDU"] == list(decoded)


@SETTINGS
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=8),
        elements=st.floats(-8.0, 8.0, width=32),
    ),
    qp=st.integers(-60, -10),
    use_dq=st.booleans(),
)
@example(x=np.array([0.1015625], np.float32), qp=-10, use_dq=False)
def test_quantisation_error_is_bounded_by_the_step(x, qp, use_dq):
    # The squared-error quantisers (lambda_scale=0) obey these bounds; the
    # rate-aware default may round 0.1015625 to 0 at step 0.1875 (the example).
    decoded = nnc.decode(
        nnc.encode({"t": x}, qp=qp, nonweight_qp=qp, use_dq=use_dq, lambda_scale=0)
    )
    step = (4 + (qp & 3)) * 2.0 ** ((qp >> 2) - 2)
    bound = 2 * step if use_dq else step / 2
    # x is scaled by float32(1/step) in float32 (quirk Q17): a relative error
    # of a few float32 ulps on top of the half step.
    slack = np.abs(x.astype(np.float64)) * 2.0**-21
    assert np.all(np.abs(decoded["t"].astype(np.float64) - x) <= bound + slack)


@SETTINGS
@given(
    rounds=st.lists(
        st.tuples(st.floats(0.0, 0.2), st.integers(0, 2**32 - 1)),
        min_size=1,
        max_size=4,
    ),
    use_dq=st.booleans(),
    row_skipping=st.booleans(),
)
def test_incremental_links_stay_in_sync(rounds, use_dq, row_skipping):
    sender, receiver = nnc.BaseState(device_id=7), nnc.BaseState(device_id=7)
    for scale, seed in rounds:
        rng = np.random.default_rng(seed)
        update = {
            "w": (rng.normal(size=(6, 5)) * scale).astype(np.float32),
            "n": rng.integers(-2, 3, size=4),
        }
        result = nnc.encode_with_reconstruction(
            update,
            compress_differences=True,
            tca=True,
            device_id=7,
            qp=-30,
            use_dq=use_dq,
            row_skipping=row_skipping,
            base=sender,
            update_base=True,
        )
        decoded = nnc.decode(result.bitstream, base=receiver, update_base=True)
        assert sender == receiver
        for name, value in decoded.items():
            assert np.array_equal(value, result.reconstruction[name])


@st.composite
def ndu_headers(draw):
    dims = tuple(
        draw(
            # Bounded with zeros counted as 1: the parser refuses a shape
            # whose non-zero dimensions overflow int32, even when it is empty.
            st.lists(st.integers(0, 300), min_size=1, max_size=5).filter(
                lambda d: math.prod(max(side, 1) for side in d) <= 1 << 16
            )
        )
    )
    payload_type = draw(st.sampled_from([hls.PT_INT, hls.PT_FLOAT]))
    parent = draw(st.integers(0, 1))
    codebook = None
    if payload_type == hls.PT_FLOAT and draw(st.booleans()):
        values = sorted(
            draw(st.sets(st.integers(-5000, 5000), min_size=1, max_size=12))
        )
        codebook = hls.Codebook(
            draw(st.integers(0, 15)),
            draw(st.integers(0, len(values) - 1)),
            tuple(values),
        )
    return hls.NDUHeader(
        payload_type=payload_type,
        name=draw(st.text(max_size=12).filter(lambda s: "\x00" not in s)),
        dims=dims,
        dq_flag=draw(st.integers(0, 1)) if codebook is None else 0,
        device_id=draw(st.integers(0, 10**6)),
        parameter_id=draw(st.integers(0, 10**6)),
        put_node_depth=draw(st.integers(0, 10**6)),
        parent_node_id_present_flag=parent,
        temporal_context_modeling_flag=draw(st.integers(0, 1)) if parent else 0,
        parent_device_id=draw(st.integers(0, 1000)) if parent else 0,
        codebook=codebook,
        cabac_unary_length_minus1=draw(st.integers(0, 255)),
    )


@SETTINGS
@given(header=ndu_headers(), parent_signalling=st.integers(0, 1))
def test_ndu_headers_round_trip_through_the_parser(header, parent_signalling):
    if not parent_signalling:
        header = hls.NDUHeader(
            **{
                **header.__dict__,
                "parent_node_id_present_flag": 0,
                "temporal_context_modeling_flag": 0,
                "parent_device_id": 0,
            }
        )
    mps = hls.ModelParameterSet(parent_signalling_enabled_flag=parent_signalling)
    payload = b"\x5a" * max(8, math.prod(header.dims) // 512 + 1)
    stream = (
        hls.write_start_unit()
        + hls.write_mps(mps)
        + hls.write_topology()
        + hls.write_ndu(header, mps, payload)
    )

    parsed = hls.parse_stream(stream)
    (unit,) = parsed.ndus
    assert unit.header == header
    assert stream[unit.payload_offset :] == payload


@SETTINGS
@given(
    fields=st.lists(
        st.one_of(
            st.tuples(st.just("u"), st.integers(1, 40), st.integers(0, 2**40)),
            st.tuples(st.just("i"), st.integers(2, 40), st.integers(-(2**39), 2**39)),
            st.tuples(st.just("ue"), st.integers(0, 12), st.integers(0, 2**30)),
            st.tuples(st.just("ie"), st.integers(0, 12), st.integers(-(2**29), 2**29)),
        ),
        max_size=30,
    )
)
def test_bit_writer_and_reader_are_inverse(fields):
    fields = [
        (kind, n, value % (1 << n))
        if kind == "u"
        else (kind, n, max(-(1 << (n - 1)), min(value, (1 << (n - 1)) - 1)))
        if kind == "i"
        else (kind, n, value)
        for kind, n, value in fields
    ]
    writer = BitWriter()
    for kind, n, value in fields:
        getattr(writer, kind)(n, value)
    writer.byte_alignment()
    reader = BitReader(writer.to_bytes())
    for kind, n, value in fields:
        assert getattr(reader, kind)(n, "field") == value
    reader.byte_alignment()
    assert reader.bits_left == 0


@SETTINGS
@given(data=st.binary(max_size=96), cut=st.integers(0, 96))
def test_arbitrary_bytes_only_ever_raise_format_errors(data, cut):
    stream = nnc.encode({"w": np.ones((3, 4), np.float32), "b": np.arange(3)})
    for candidate in (data, stream[:cut] + data, stream + data[:1]):
        try:
            nnc.decode(candidate)
        except nnc.NNCFormatError as error:
            assert error.offset is not None and "byte offset" in str(error)


@pytest.mark.parametrize("density", [0, 1, 3, 7])
def test_other_qp_densities_round_trip(density):
    low = -(1 << (5 + density))
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)
    result = nnc.encode_with_reconstruction(
        {"x": x}, qp_density=density, qp=low // 2, nonweight_qp=low // 2
    )
    assert nnc.inspect(result.bitstream)[1]["qp_density"] == density
    assert np.array_equal(nnc.decode(result.bitstream)["x"], result.reconstruction["x"])


@st.composite
def block_scan_cases(draw):
    """A float matrix (2-4 dims) with several block rows at some scan order,
    rows that may be all zero, and encoder options that touch the scan."""
    scan_order = draw(st.integers(1, 4))
    block = 4 << scan_order
    height = draw(st.integers(1, 3 * block + 3))
    rest = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))
    scale = draw(st.sampled_from([1e-3, 0.05, 3.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, scale, (height, *rest)).astype(np.float32)
    zero_rows = draw(st.lists(st.integers(0, height - 1), max_size=height))
    x[zero_rows] = 0.0
    options = {
        "scan_order": scan_order,
        "qp": draw(st.integers(-60, -8)),
        "use_dq": draw(st.booleans()),
        "row_skipping": draw(st.booleans()),
        "lambda_scale": draw(st.sampled_from([0.0, 0.5, 2.0])),
    }
    return x, options


@SETTINGS
@given(case=block_scan_cases(), num_threads=st.integers(1, 6))
def test_block_scans_decode_to_the_reconstruction_on_any_thread_count(
    case, num_threads
):
    x, options = case
    result = nnc.encode_with_reconstruction({"w": x}, **options)
    header = hls.parse_stream(result.bitstream).ndus[0].header
    height, width = x.shape[0], math.prod(x.shape[1:])
    block = 4 << options["scan_order"]
    blocked = height > 1 and width > 1
    assert header.scan_order == (options["scan_order"] if blocked else 0)
    expected_entries = -(-height // block) - 1 if blocked else 0
    assert len(header.entry_points) == expected_entries

    decoded = nnc.decode(result.bitstream, num_threads=num_threads)
    assert np.array_equal(decoded["w"], result.reconstruction["w"])
    # The stream does not depend on the encoder's thread count either.
    assert nnc.encode({"w": x}, num_threads=num_threads, **options) == result.bitstream
