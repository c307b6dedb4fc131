"""Regression tests for the adversarial tester's codec findings.

Each test reproduces one finding (hang on empty shapes, decompression bombs,
streams the encoder writes but the decoder refuses, non-finite
reconstructions, misleading option errors, unchecked API inputs) and asserts
the fixed behaviour.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import flwr_nncodec as nnc
from flwr_nncodec import _core, hls
from flwr_nncodec.codec import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_TOTAL_ELEMENTS
from flwr_nncodec.options import make_options, qp_range


def restream(
    source: bytes,
    *,
    dims: dict[str, tuple[int, ...]] | None = None,
    mps_qp: int | None = None,
) -> bytes:
    """``source`` rewritten with other NDU dims and/or MPS qp, payloads kept."""
    parsed = hls.parse_stream(source)
    mps = parsed.mps
    if mps_qp is not None:
        mps = dataclasses.replace(mps, quantization_parameter=mps_qp)
    chunks = [hls.write_start_unit(), hls.write_mps(mps), hls.write_topology()]
    for unit in parsed.ndus:
        header = unit.header
        if dims and header.name in dims:
            header = dataclasses.replace(header, dims=dims[header.name])
        payload = source[unit.payload_offset : unit.offset + unit.size]
        chunks.append(hls.write_ndu(header, mps, payload))
    return b"".join(chunks)


def stream_of(ndus: list[tuple[str, tuple[int, ...], int, bytes]]) -> bytes:
    """A stream of NDUs (name, dims, payload type, payload) at qp_density 2."""
    mps = hls.ModelParameterSet(qp_density=2)
    chunks = [hls.write_start_unit(), hls.write_mps(mps), hls.write_topology()]
    for index, (name, dims, payload_type, payload) in enumerate(ndus):
        header = hls.NDUHeader(
            payload_type=payload_type, name=name, dims=dims, parameter_id=index
        )
        chunks.append(hls.write_ndu(header, mps, payload))
    return b"".join(chunks)


def all_zero_rows_payload(height: int, width: int) -> bytes:
    """A segment whose rows are all skipped: 1 bin per row, any width."""
    q = np.zeros(height * 16, np.int32)
    return _core.encode_segment(
        q, height, 16, qp=0, qp_density=2, dq=True,
        hdsp_flag_present=False, row_skipping=True, param_opt=True,
    )


# -- finding 1: empty tensors with a huge other dimension ---------------------


def test_empty_matrix_with_huge_height_costs_no_per_row_work():
    """H x 0 segments take no time in the core (they looped over H rows)."""
    script = textwrap.dedent(
        """
        import numpy as np
        from flwr_nncodec import _core
        empty = np.zeros(0, np.int32)
        kw = dict(qp_density=2, dq=True, hdsp_flag_present=False)
        seg = _core.encode_segment(
            empty, 1 << 40, 0, qp=-32, row_skipping=True, param_opt=True, **kw
        )
        q, qp, used = _core.decode_segment(seg, 1 << 40, 0, has_qp=True, **kw)
        x = np.zeros(0, np.float32)
        out = _core.encode_tensors(
            [x], [(1 << 40, 0)], [-32], lambda_scale=0.5, row_skipping=True,
            param_opt=True, num_threads=1, **kw
        )
        print(q.size, qp, used == len(seg), len(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "-32", "True", "1"]


def test_absurd_empty_shapes_are_refused_by_decoder_and_encoder():
    source = nnc.encode({"w": np.zeros((3, 0), np.float32)})
    for dims in [(1 << 40, 0), (0, 1 << 40), (1 << 31, 0, 5), (2**31 - 1, 2**31 - 1, 0)]:
        with pytest.raises(nnc.NNCFormatError, match="non-zero dimensions multiply"):
            nnc.decode(restream(source, dims={"w": dims}))
    with pytest.raises(ValueError, match="non-zero dimensions multiply"):
        nnc.encode({"w": np.zeros((1 << 31, 0), np.float32)})


def test_largest_admissible_empty_shape_decodes_at_once():
    source = nnc.encode({"w": np.zeros((3, 0), np.float32)})
    decoded = nnc.decode(restream(source, dims={"w": (2**31 - 1, 0)}))
    assert decoded["w"].shape == (2**31 - 1, 0)
    assert decoded["w"].dtype == np.float32


# -- finding 2: decompression bombs -------------------------------------------


def test_default_limits_are_2_pow_26_per_tensor_and_2_pow_28_in_all():
    assert DEFAULT_MAX_ELEMENTS == 1 << 26
    assert DEFAULT_MAX_TOTAL_ELEMENTS == 1 << 28


def test_tiny_stream_claiming_a_gigabyte_is_refused_with_a_hint():
    """42 bytes that decoded to 1 GiB before: refused from the header."""
    bomb = stream_of([("a", (2, 1 << 27), hls.PT_FLOAT, all_zero_rows_payload(2, 1))])
    assert len(bomb) < 64
    with pytest.raises(nnc.NNCFormatError) as caught:
        nnc.decode(bomb)
    message = str(caught.value)
    assert "268435456 elements" in message
    assert "decode(max_elements=...)" in message and "--max-elements" in message


def test_many_tensors_under_the_per_tensor_limit_hit_the_total_limit():
    payload = all_zero_rows_payload(2, 1)
    bomb = stream_of(
        [(f"t{i}", (2, 1 << 25), hls.PT_FLOAT, payload) for i in range(5)]
    )
    with pytest.raises(nnc.NNCFormatError, match="--max-total-elements"):
        nnc.decode(bomb)


def test_inspect_allocates_nothing_per_element():
    bomb = stream_of([("a", (2, (1 << 30) - 1), hls.PT_FLOAT, all_zero_rows_payload(2, 1))])
    tracemalloc.start()
    try:
        units = nnc.inspect(bomb)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert units[3]["shape"] == (2, (1 << 30) - 1)
    assert peak_bytes < 1 << 20


@pytest.mark.parametrize(
    ("value", "error", "pattern"),
    [("x", TypeError, "max_elements must be an int, got str"),
     (1.5, TypeError, "max_elements must be an int"),
     (-1, ValueError, "max_elements must be >= 0, got -1")],
)
def test_decode_limits_are_type_checked(value, error, pattern):
    stream = nnc.encode({"w": np.ones((2, 2), np.float32)})
    with pytest.raises(error, match=pattern):
        nnc.decode(stream, max_elements=value)
    with pytest.raises(error, match=pattern.replace("max_", "max_total_")):
        nnc.decode(stream, max_total_elements=value)


# -- finding 4: what the encoder writes, the decoder accepts ------------------


def test_encoder_refuses_more_than_32_dimensions():
    with pytest.raises(ValueError, match="33 dimensions; NNC codes 1..32"):
        nnc.encode({"a": np.zeros((1,) * 33, np.float32)})
    shape = (1,) * 31 + (2,)
    decoded = nnc.decode(nnc.encode({"a": np.ones(shape, np.float32)}))
    assert decoded["a"].shape == shape


def test_qp_range_is_what_the_decoder_accepts():
    assert qp_range(7) == (-4095, 4095)
    assert qp_range(2) == (-128, 127)
    with pytest.raises(ValueError, match="qp = -4096 is outside the range -4095..4095"):
        make_options(qp=-4096, qp_density=7)
    result = nnc.encode_with_reconstruction(
        {"t": np.array([[1e-20, 0.0]], np.float32)}, qp_density=7, qp=-4095
    )
    assert result.qp == {"t": -4095}
    assert np.array_equal(nnc.decode(result.bitstream)["t"], result.reconstruction["t"])


@pytest.mark.parametrize("qp_density", [2, 7])
def test_bitdepth_qp_of_tiny_values_stays_decodable(qp_density):
    x = np.array([[1e-38, -5e-39]], np.float32)
    result = nnc.encode_with_reconstruction(
        {"t": x}, qp_density=qp_density, qp=0, nonweight_qp=0, bitdepth=8
    )
    assert result.qp["t"] == qp_range(qp_density)[0]
    assert np.array_equal(nnc.decode(result.bitstream)["t"], result.reconstruction["t"])


# -- finding 5: non-finite reconstructions ------------------------------------


def test_reconstruction_overflowing_float32_is_refused():
    x = np.array([[1.0, -3.0, 2.0, 0.0, 100.0]], np.float32)
    source = nnc.encode({"w": x}, qp_density=0, qp=0, nonweight_qp=0, use_dq=False)
    finite = nnc.decode(restream(source, mps_qp=120))["w"]  # step 2**120: finite
    assert np.array_equal(finite, x * np.float32(2.0**120))
    with pytest.raises(nnc.NNCFormatError, match="not finite.*qp 127") as caught:
        nnc.decode(restream(source, mps_qp=127))
    assert caught.value.unit == "NDU #3 'w'"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_raw_float_payload_with_nan_or_inf_is_refused(bad):
    good = np.array([1.0, 2.0], "<f4")
    stream = stream_of([("r", (2,), hls.PT_RAW_FLOAT, good.tobytes())])
    assert np.array_equal(nnc.decode(stream)["r"], good)
    poisoned = np.array([1.0, bad], "<f4").tobytes()
    with pytest.raises(nnc.NNCFormatError, match="not finite") as caught:
        nnc.decode(stream_of([("r", (2,), hls.PT_RAW_FLOAT, poisoned)]))
    assert caught.value.unit == "NDU #3 'r'"


# -- finding 8: nonweight_qp messages -----------------------------------------


def test_derived_nonweight_qp_out_of_range_says_how_it_was_derived():
    with pytest.raises(ValueError) as caught:
        nnc.encode({"b": np.array([0.01, -0.02], np.float32)}, qp=-128, nonweight_qp=None)
    assert "qp - 2**(qp_density + 1) = -128 - 8 = -136" in str(caught.value)
    assert "-128..127" in str(caught.value)


@pytest.mark.parametrize(("qp_density", "clamped"), [(0, -32), (1, -64), (2, -75)])
def test_default_nonweight_qp_is_clamped_for_coarse_qp_densities(qp_density, clamped):
    result = nnc.encode_with_reconstruction(
        {"w": np.full((2, 2), 0.5, np.float32), "b": np.array([0.01], np.float32)},
        qp=-8, qp_density=qp_density,
    )
    assert result.qp["b"] == clamped
    assert make_options(qp=-8, qp_density=qp_density).nonweight_qp == clamped


# -- finding 9: input checks --------------------------------------------------


def test_tensor_name_that_is_not_utf8_encodable_is_named():
    with pytest.raises(ValueError, match=r"tensor name '\\ud800' cannot be encoded"):
        nnc.encode({"\ud800": np.ones(2, np.float32)})


def test_torch_meta_sparse_and_quantized_tensors_are_type_errors():
    torch = pytest.importorskip("torch")
    cases = {
        "m": (torch.empty(2, 2, device="meta"), "meta tensor"),
        "s": (torch.eye(2).to_sparse(), "sparse_coo"),
        "q": (torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8), "quantized"),
    }
    for name, (tensor, pattern) in cases.items():
        with pytest.raises(TypeError, match=f"tensor '{name}' .*{pattern}"):
            nnc.encode({name: tensor})


def test_base_state_from_arrays_with_non_string_key_is_a_type_error():
    with pytest.raises(TypeError, match="base entry keys must be str, got 1"):
        nnc.BaseState.from_arrays({1: np.ones(1, np.int32)})


def test_base_state_validates_its_arrays_on_construction():
    with pytest.raises(ValueError, match=r"parameters\['w'\] has dtype float64"):
        nnc.BaseState(parameters={"w": np.array([0.7, 3e9])})
    with pytest.raises(ValueError, match="outside int32"):
        nnc.BaseState(parameters={"w": np.array([1 << 40], np.int64)})
    with pytest.raises(TypeError, match="tensor names must be str"):
        nnc.BaseState(parameters={3: np.zeros(1, np.int32)})
    with pytest.raises(ValueError, match=r"put_node_depth\['w'\] = -1"):
        nnc.BaseState(put_node_depth={"w": -1})
    state = nnc.BaseState(parameters={"w": np.array([1, -2], np.int64)})
    assert state.parameters["w"].dtype == np.int32
    assert state.parameters["w"].tolist() == [1, -2]
