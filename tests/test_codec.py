"""Public codec API: golden streams, round trips, options and incremental coding."""

from __future__ import annotations

import numpy as np
import pytest

import flwr_nncodec as nnc
from flwr_nncodec import hls

W = np.array([[0.1, -0.2, 0.0], [0.05, 0.3, -0.01]], dtype=np.float32)
B = np.array([0.5, -0.25, 0.001], dtype=np.float32)

# nnc-format §1.9 / §1.10: what nncodec.nn.encode writes.
HEAD = bytes.fromhex("00040201000806810040008000060e000000")
EXAMPLE_A = HEAD + bytes.fromhex(
    "001d16097700d041c120a0c2a080dff7a00ea44606501f6042ba91dcb0"
)
EXAMPLE_A_URQ = HEAD + bytes.fromhex(
    "001e16097700d040c120a0c2a080df668009a01e00016e73054000665d46"
)
EXAMPLE_B = EXAMPLE_A + bytes.fromhex(
    "001f16096200d0c1c3830a80b4d80007380003931e00000019984800018ffe"
)

# A differential TCA stream written by NNCodec 2.1.3 (nnc.compress with
# compress_differences=True, tca=True, use_dq=False, qp=-44, device_id=3,
# row_skipping=True, param_opt=False and the base below); 'z' is all zero.
TCA_W = np.frombuffer(
    bytes.fromhex(
        "687be23b2a9d863c248ed83b6082d5bc6155943c9d44123ce7f22fbcb86b3e3c19edee3b"
        "3fc3c03bb003153a9c25333c3f5271bc828755bb19fb1dbcdc3a443c1c42503a1aaabfbb"
        "9e1b80bcb38da8bb00c12a397f9eb4bbf804d43c14f1a43c33195ebd7bbf1abdc81365bb"
        "e6570abc59038c3b926c8e3b4c7e2d3d8831b6bc9c77f7bb0758273d61e9533cc945593c"
        "fb6d28bca40207bdd87f5b3b0fe30e3be016c9bc35e15fbcb2dbbcbac1c99abceecd00bb"
        "934dfa3a0a933a3ad3e625bc338f423c4002923c6a45d23b100f86bc71bf6f3cd64f24bc"
        "ab0a903c069aafbc89d3953c6d61d2b95398ccbc98b7cdbb"
    ),
    dtype="<f4",
).reshape(6, 10)
TCA_B = np.frombuffer(
    bytes.fromhex(
        "6dd38d3acbc6b23bf5eba0bc986eb5bcbacc823bccf118bc49579a3b1ee1783c941107bd"
        "3eb7a63b"
    ),
    dtype="<f4",
)
TCA_BASE_Q = np.array(
    [
        [-3, 0, -1, 3, 2, -1, 1, 1, 3, -3],
        [0, 1, 0, 3, 3, 2, 0, 3, -3, 1],
        [-2, -2, 1, 2, 3, -2, 3, 2, -1, -3],
        [2, 2, 0, -2, -2, -1, 2, -1, -3, 1],
        [2, -2, 0, -1, 0, -3, 1, -2, 0, -1],
        [1, -3, -1, 1, 2, -1, -3, 2, 0, 1],
    ],
    dtype=np.int32,
)
TCA_STREAM = bytes.fromhex(
    "00040201000806810840008000060e000000006f16097700ac1198c121a282a080d3904c00"
    "0d715c2239f417802774600cc40760044da24301c020482f20068630f39da882270cd45859"
    "7bfa13a841b2860cd2ca70b0fee373d1200016a01716baca0a4cda92184ddebe7f0d23e8b4"
    "a03ac8bbb5cbfd35950283f5d68603457478003c16096200ac5188c38a0a80b4d800134001"
    "bb4000050f5480001fb4fe0000042d5200068f000004bac0000647b3c00cac000001a73300"
    "04fa2780"
)


def tca_base() -> nnc.BaseState:
    return nnc.BaseState(
        device_id=3,
        parameters={"w": TCA_BASE_Q.copy()},
        put_node_depth={"w": 0},
        parameter_id={"w": 0},
    )


def assert_same_floats(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert np.array_equal(actual.view(np.uint32), expected.view(np.uint32))


# --------------------------------------------------------------------------
# Golden streams


# The golden streams are NNCodec's: they are written with its squared-error
# quantisation, lambda_scale=0 (the default, 0.5, is rate-aware).
NNCODEC_CHOICE = {"lambda_scale": 0.0}


def test_nncodec_defaults_write_worked_example_a_byte_for_byte():
    assert nnc.encode({"w": W}, **NNCODEC_CHOICE) == EXAMPLE_A


def test_urq_without_row_skip_and_param_opt_writes_the_48_byte_stream():
    stream = nnc.encode(
        {"w": W}, use_dq=False, param_opt=False, row_skipping=False, **NNCODEC_CHOICE
    )
    assert stream == EXAMPLE_A_URQ


def test_two_tensors_write_example_b_and_decode_to_the_documented_values():
    assert nnc.encode({"w": W, "b": B}, **NNCODEC_CHOICE) == EXAMPLE_B
    decoded = nnc.decode(EXAMPLE_B)

    assert list(decoded) == ["w", "b"]
    expected_w = np.array([[26, -52, 0], [13, 76, -3]], dtype=np.float32) / 256
    assert_same_floats(decoded["w"], expected_w)
    assert decoded["b"][0] == np.float32(209716 * 5 * 2.0**-21)


def test_differential_tca_stream_equals_nncodecs():
    base = tca_base()
    params = {"w": TCA_W, "z": np.zeros((4, 4), np.float32), "b": TCA_B}
    stream = nnc.encode(
        params,
        compress_differences=True,
        tca=True,
        use_dq=False,
        qp=-44,
        device_id=3,
        base=base,
        param_opt=False,
        **NNCODEC_CHOICE,
    )
    assert stream == TCA_STREAM
    assert base == tca_base()  # no update_base: untouched

    units = nnc.inspect(stream)
    assert [u.get("name") for u in units] == [None, None, None, "w", "b"]
    assert units[1]["parent_signalling"] is True
    w_unit, b_unit = units[3], units[4]
    assert (w_unit["tca"], w_unit["device_id"], w_unit["put_node_depth"]) == (
        True,
        3,
        1,
    )
    assert (b_unit["tca"], b_unit["parameter_id"], b_unit["put_node_depth"]) == (
        False,
        2,
        1,
    )
    assert w_unit["parent_node_id_present"] and b_unit["parent_node_id_present"]


def test_tca_stream_needs_the_matching_base():
    with pytest.raises(nnc.NNCFormatError, match="TCA.*no base") as info:
        nnc.decode(TCA_STREAM)
    assert info.value.unit == "NDU #3 'w'" and info.value.offset == 18

    stale = tca_base()
    stale.put_node_depth["w"] = 1
    with pytest.raises(nnc.NNCFormatError, match="put_node_depth 1"):
        nnc.decode(TCA_STREAM, base=stale)

    other_device = tca_base()
    other_device.device_id = 4
    with pytest.raises(nnc.NNCFormatError, match="device_id 3"):
        nnc.decode(TCA_STREAM, base=other_device)

    decoded = nnc.decode(TCA_STREAM, base=tca_base())
    assert sorted(decoded) == ["b", "w"]  # all-zero 'z' is not in the stream


# --------------------------------------------------------------------------
# Round trips


def round_trip(params, **options):
    result = nnc.encode_with_reconstruction(params, **options)
    decoded = nnc.decode(result.bitstream)
    assert list(decoded) == list(result.reconstruction)
    for name, value in decoded.items():
        expected = result.reconstruction[name]
        assert value.dtype == expected.dtype and value.shape == expected.shape
        assert np.array_equal(value, expected)
    return result, decoded


@pytest.mark.parametrize("use_dq", [True, False])
@pytest.mark.parametrize("row_skipping", [True, False])
def test_round_trip_is_exact_and_within_half_a_step(use_dq, row_skipping):
    rng = np.random.default_rng(7)
    weight = (rng.normal(size=(16, 24)) * 0.05).astype(np.float32)
    weight[3] = 0  # a row to skip
    params = {"fc.weight": weight, "fc.bias": rng.normal(size=24).astype(np.float32)}

    result, decoded = round_trip(
        params, use_dq=use_dq, row_skipping=row_skipping, lambda_scale=0.0
    )

    step = 2.0**-8  # qp -32
    # With lambda_scale=0 (squared error only) URQ rounds to the nearest
    # multiple; the DQ trellis picks, per value, one of the two nearest
    # indices of its state's quantiser (spacing 2*step).
    limit = 2 * step if use_dq else step / 2
    assert np.max(np.abs(decoded["fc.weight"] - weight)) <= limit
    assert np.array_equal(decoded["fc.weight"][3], np.zeros(24, np.float32))
    assert result.qp == {"fc.weight": -32, "fc.bias": -75}


def test_input_dtypes_are_converted_and_decoded_as_float32_or_int32():
    torch = pytest.importorskip("torch")
    params = {
        "f16": np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4),
        "f64": np.linspace(-1, 1, 6),
        "bf16": torch.linspace(-1, 1, 8, dtype=torch.bfloat16).reshape(2, 4),
        "torch32": torch.ones(3, 3),
        "i64": np.array([[-(2**31), -1, 0, 1, 2**31 - 1]], dtype=np.int64),
        "u8": np.arange(7, dtype=np.uint8),
        "flag": np.array([True, False, True]),
        "scalar": np.float32(0.25),
        "int_scalar": 3,
    }
    _, decoded = round_trip(params)

    assert {k: v.dtype.name for k, v in decoded.items()} == {
        "f16": "float32",
        "f64": "float32",
        "bf16": "float32",
        "torch32": "float32",
        "i64": "int32",
        "u8": "int32",
        "flag": "int32",
        "scalar": "float32",
        "int_scalar": "int32",
    }
    assert decoded["scalar"].shape == (1,) and decoded["int_scalar"].tolist() == [3]
    assert decoded["i64"].tolist() == params["i64"].tolist()
    assert decoded["flag"].tolist() == [1, 0, 1]
    assert np.max(np.abs(decoded["bf16"] - params["bf16"].float().numpy())) <= 2**-7


def test_non_contiguous_input_equals_its_contiguous_copy():
    base = np.arange(60, dtype=np.float32).reshape(6, 10) / 64
    view = base.T[::2]  # (5, 6), strided
    assert not view.flags.c_contiguous
    assert nnc.encode({"v": view}) == nnc.encode({"v": np.ascontiguousarray(view)})


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)])
def test_empty_tensors_round_trip(shape):
    _, decoded = round_trip({"e": np.zeros(shape, np.float32), "b": B})
    assert decoded["e"].shape == shape


def test_encode_tensor_and_decode_tensor():
    stream = nnc.encode_tensor(W, name="w", **NNCODEC_CHOICE)
    assert stream == EXAMPLE_A
    assert_same_floats(nnc.decode_tensor(stream), nnc.decode(EXAMPLE_A)["w"])
    with pytest.raises(ValueError, match="one tensor, found 2"):
        nnc.decode_tensor(EXAMPLE_B)


def test_decode_accepts_bytes_like_inputs():
    expected = nnc.decode(EXAMPLE_B)
    for form in (
        bytearray(EXAMPLE_B),
        memoryview(EXAMPLE_B),
        np.frombuffer(EXAMPLE_B, dtype=np.uint8),
    ):
        decoded = nnc.decode(form)
        assert all(np.array_equal(decoded[k], expected[k]) for k in expected)
    with pytest.raises(TypeError, match="bytes-like"):
        nnc.decode("not bytes")


# --------------------------------------------------------------------------
# Quantisation options


def qps_in(stream: bytes) -> dict[str, int]:
    return {u["name"]: u["qp"] for u in nnc.inspect(stream) if u["type"] == "NDU"}


def test_qp_applies_to_weights_and_nonweight_qp_to_the_rest():
    stream = nnc.encode({"w": W, "b": B}, qp=-40, nonweight_qp=-60)
    assert qps_in(stream) == {"w": -40, "b": -60}


@pytest.mark.parametrize("falsy", [None, 0])
def test_falsy_nonweight_qp_means_a_quarter_of_the_weight_step(falsy):
    stream = nnc.encode({"w": W, "b": B}, qp=-30, nonweight_qp=falsy)
    assert qps_in(stream) == {"w": -30, "b": -38}


def test_overflowing_values_raise_the_qp_like_nncodec():
    x = np.array([[1e8, -3.0], [0.5, 0.0]], dtype=np.float32)
    result, decoded = round_trip({"w": x}, qp=-32)
    # min step 1e8 / (2**31 - 3) = 0.0466 -> qp -18 (step 0.0469)
    assert result.qp == {"w": -18}
    assert qps_in(result.bitstream) == {"w": -18}
    assert abs(decoded["w"][0, 0] - 1e8) <= 0.0469 * 2


def test_values_beyond_any_qp_are_refused():
    with pytest.raises(ValueError, match="'w'.*outside the codable range"):
        nnc.encode({"w": np.full((2, 2), 3e38, np.float32)})


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"qp": -129}, ValueError, "qp = -129 is outside the range -128..127"),
        ({"qp": 128}, ValueError, "qp = 128"),
        (
            {"qp": -40, "qp_density": 0},
            ValueError,
            "qp = -40 is outside the range -32..31",
        ),
        (
            {"qp": -20, "qp_density": 0, "nonweight_qp": -75},
            ValueError,
            "nonweight_qp = -75 is outside",
        ),
        ({"nonweight_qp": -200}, ValueError, "nonweight_qp = -200"),
        ({"qp": 1.5}, TypeError, "qp must be an integer"),
        ({"qp_density": 8}, ValueError, "qp_density = 8"),
        ({"bitdepth": 1}, ValueError, "bitdepth = 1"),
        ({"approx_method": "kmeans"}, ValueError, "approx_method"),
        ({"sparsity": 1.5}, ValueError, "sparsity = 1.5"),
        ({"lambda_scale": float("nan")}, ValueError, "lambda_scale"),
        ({"lambda_scale": 1e308}, ValueError, r"lambda_scale = 1e\+308 is outside"),
        ({"device_id": -1}, ValueError, "device_id = -1"),
        ({"use_dq": "yes"}, TypeError, "use_dq must be a bool"),
        ({"qpp": -32}, TypeError, "unknown encoder option.*'qpp'"),
        ({"update_base": True}, ValueError, "update_base=True needs a base"),
        ({"tca": True}, ValueError, "compress_differences"),
        ({"base": {"parameters": {}}}, TypeError, "BaseState"),
    ],
)
def test_invalid_options_are_refused_by_name(options, error, pattern):
    with pytest.raises(error, match=pattern):
        nnc.encode({"w": W}, **options)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (np.array([1.0, np.nan], np.float32), "'bad' contains NaN"),
        (np.array([np.inf], np.float64), "'bad' contains NaN or infinity"),
        (np.array([1e300]), "'bad' contains values beyond the float32 range"),
        (np.array([2**40], np.int64), "'bad'.*outside the int32 range"),
        (np.array([-(2**31) - 1], np.int64), "'bad'.*outside the int32 range"),
        (np.array([1 + 2j]), "'bad' has unsupported dtype complex128"),
        (np.array(["a"]), "'bad' has unsupported dtype"),
    ],
)
def test_invalid_tensors_are_refused_by_name(value, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        nnc.encode({"ok": W, "bad": value})


def test_tensor_names_must_be_strings_without_nul():
    with pytest.raises(TypeError, match="names must be str"):
        nnc.encode({1: W})
    with pytest.raises(ValueError, match="NUL"):
        nnc.encode({"a\x00b": W})
    with pytest.raises(TypeError, match="mapping"):
        nnc.encode([W])


def test_bitdepth_keeps_indices_in_range_and_round_trips():
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(32, 32)).astype(np.float32)
    weight[0, 0] = 40.0  # beyond the 99.95th percentile: gets clipped
    positive = np.abs(rng.normal(size=(8, 8))).astype(np.float32)
    for use_dq in (True, False):
        result, _ = round_trip({"w": weight, "p": positive}, bitdepth=4, use_dq=use_dq)
        assert result.levels["w"].min() >= -8 and result.levels["w"].max() <= 7
        # The outlier hits the bound. DQ: position 0 is in state 0, which only
        # admits even indices; 4 or 6 keeps the trellis' level parity.
        assert result.levels["w"][0, 0] in ((4, 6) if use_dq else (7,))
        assert result.levels["p"].min() >= 0 and result.levels["p"].max() <= 15


def test_codebook_mode_picks_a_codebook_for_few_distinct_values():
    levels = np.array([-80, -6, 0, 10, 34, 180], dtype=np.float32)
    few = np.random.default_rng(5).choice(levels, size=(16, 16)) / 256
    result, decoded = round_trip(
        {"few": few.astype(np.float32)}, approx_method="codebook", use_dq=False, qp=-32
    )
    unit = nnc.inspect(result.bitstream)[3]
    assert unit["codebook_size"] == 6 and unit["dq"] is False
    assert_same_floats(decoded["few"], few.astype(np.float32))


def test_codebook_mode_falls_back_to_uniform_when_cheaper():
    gauss = np.random.default_rng(6).normal(size=(64, 64)).astype(np.float32)
    result, _ = round_trip({"g": gauss}, approx_method="codebook")
    assert nnc.inspect(result.bitstream)[3]["codebook_size"] == 0
    assert result.bitstream == nnc.encode({"g": gauss})


# --------------------------------------------------------------------------
# Rate-aware default and threads


def laplacian_update(shape=(128, 256), seed=11) -> np.ndarray:
    """A weight-difference-like tensor: Laplacian, scale 0.002 (half a step)."""
    return np.random.default_rng(seed).laplace(0, 0.002, shape).astype(np.float32)


@pytest.mark.parametrize("use_dq", [True, False])
def test_default_quantisation_is_rate_aware(use_dq):
    update = {"dw": laplacian_update()}
    default = nnc.encode_with_reconstruction(update, use_dq=use_dq)
    nncodec_choice = nnc.encode_with_reconstruction(
        update, use_dq=use_dq, **NNCODEC_CHOICE
    )

    assert default.bitstream == nnc.encode(update, use_dq=use_dq, lambda_scale=0.5)
    assert default.bitstream == nnc.encode(update, use_dq=use_dq)
    # Fewer bytes for a little more error, and the decoder agrees.
    assert len(default.bitstream) < 0.95 * len(nncodec_choice.bitstream)
    assert not np.array_equal(default.levels["dw"], nncodec_choice.levels["dw"])
    decoded = nnc.decode(default.bitstream)["dw"]
    assert np.array_equal(decoded, default.reconstruction["dw"])


def test_thread_count_does_not_change_the_stream():
    rng = np.random.default_rng(12)
    params = {
        f"layer{i}.weight": rng.normal(0, 0.05, (40 + i, 30)).astype(np.float32)
        for i in range(5)
    }
    params["layer0.bias"] = rng.normal(0, 0.05, 40).astype(np.float32)
    params["steps"] = np.arange(7, dtype=np.int64)
    streams = {n: nnc.encode(params, num_threads=n) for n in (1, 2, 3, 0)}
    assert len(set(streams.values())) == 1

    decoded = {n: nnc.decode(streams[1], num_threads=n) for n in (1, 2, 0)}
    for name in params:
        assert np.array_equal(decoded[1][name], decoded[2][name])
        assert np.array_equal(decoded[1][name], decoded[0][name])
    assert np.array_equal(decoded[0]["steps"], params["steps"])


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError)])
def test_thread_count_is_validated(bad, error):
    with pytest.raises(error, match="num_threads"):
        nnc.encode({"w": W}, num_threads=bad)
    with pytest.raises(error, match="num_threads"):
        nnc.decode(EXAMPLE_A, num_threads=bad)


def test_decode_names_the_failing_unit_of_a_multi_tensor_stream():
    params = {"a": laplacian_update((8, 8)), "b": laplacian_update((8, 8), 3)}
    stream = bytearray(nnc.encode(params, **NNCODEC_CHOICE))
    last = nnc.inspect(bytes(stream))[-1]
    stream[last["offset"] + last["size"] - 1] ^= 0xFF  # break b's stop bits
    with pytest.raises(nnc.NNCFormatError) as caught:
        nnc.decode(bytes(stream))
    assert caught.value.unit == "NDU #4 'b'"


# --------------------------------------------------------------------------
# Differential and incremental coding


@pytest.mark.parametrize("plain_float", [True, False])
def test_tca_base_of_the_wrong_size_matters_only_if_the_tensor_is_coded(plain_float):
    base = nnc.BaseState(
        device_id=0,
        parameters={"w": np.zeros(5, np.int32)},  # w has 6 values below
        put_node_depth={"w": 0},
        parameter_id={"w": 0},
    )
    options = dict(compress_differences=True, tca=True, base=base)
    if not plain_float:  # the bit-depth path quantises outside encode_tensors
        options["bitdepth"] = 8
    zero = np.zeros((2, 3), np.float32)
    result = nnc.encode_with_reconstruction({"w": zero}, **options)
    assert result.dropped == ("w",)

    with pytest.raises(ValueError, match="base has 5 values, tensor has 6"):
        nnc.encode({"w": np.full((2, 3), 0.5, np.float32)}, **options)


def test_differential_streams_drop_tensors_that_quantise_to_zero():
    tiny = np.full((3, 3), 1e-6, np.float32)  # below half a step at qp -32
    result = nnc.encode_with_reconstruction(
        {"w": W, "tiny": tiny, "z": np.zeros(4, np.float32)}, compress_differences=True
    )
    assert result.dropped == ("tiny", "z")
    assert list(nnc.decode(result.bitstream)) == ["w"]
    ndu = nnc.inspect(result.bitstream)[3]
    assert ndu["parent_node_id_present"] and not ndu["tca"]
    assert ndu["put_node_depth"] == 0  # no base given

    plain = nnc.encode_with_reconstruction({"w": W, "z": np.zeros(4, np.float32)})
    assert plain.dropped == () and list(nnc.decode(plain.bitstream)) == ["w", "z"]


def test_incremental_link_advances_both_bases_identically():
    rng = np.random.default_rng(11)
    sender, receiver = nnc.BaseState(device_id=2), nnc.BaseState(device_id=2)
    options = dict(compress_differences=True, tca=True, device_id=2, qp=-36)
    for round_index in range(4):
        update = {
            "a": (rng.normal(size=(12, 8)) * 0.02).astype(np.float32),
            "b": (rng.normal(size=8) * 0.02).astype(np.float32),
        }
        if round_index == 2:
            update["b"] = np.zeros(8, np.float32)  # dropped this round
        result = nnc.encode_with_reconstruction(
            update, base=sender, update_base=True, **options
        )
        decoded = nnc.decode(result.bitstream, base=receiver, update_base=True)

        assert sender == receiver
        for name, value in decoded.items():
            assert np.array_equal(value, result.reconstruction[name])
            assert np.array_equal(sender.parameters[name], result.levels[name])
        units = {
            u["name"]: u for u in nnc.inspect(result.bitstream) if u["type"] == "NDU"
        }
        assert units["a"]["tca"] is (round_index > 0)
        assert units["a"]["put_node_depth"] == round_index + 1

    assert sender.put_node_depth == {"a": 4, "b": 3}
    assert sender.parameter_id == {"a": 0, "b": 1}


def test_a_missed_update_is_detected_not_decoded_into_garbage():
    rng = np.random.default_rng(12)
    sender, receiver = nnc.BaseState(), nnc.BaseState()
    streams = []
    for _ in range(3):
        update = {"a": (rng.normal(size=(6, 6)) * 0.05).astype(np.float32)}
        streams.append(
            nnc.encode(
                update,
                compress_differences=True,
                tca=True,
                base=sender,
                update_base=True,
            )
        )
    nnc.decode(streams[0], base=receiver, update_base=True)
    before = receiver.copy()
    with pytest.raises(nnc.NNCFormatError, match="put_node_depth 3 is not"):
        nnc.decode(streams[2], base=receiver, update_base=True)
    assert receiver == before  # a failed decode leaves the base alone


def test_base_state_plain_array_form():
    base = tca_base()
    arrays = base.to_arrays()
    assert all(
        isinstance(v, np.ndarray) and v.dtype.kind == "i" for v in arrays.values()
    )
    assert sorted(arrays) == ["depth/w", "device_id", "pid/w", "q/w"]
    assert nnc.BaseState.from_arrays(arrays) == base
    assert nnc.BaseState.from_nncodec(base.to_nncodec()) == base

    with pytest.raises(ValueError, match="unknown base entry 'x'"):
        nnc.BaseState.from_arrays({"x": np.zeros(1, np.int64)})
    with pytest.raises(ValueError, match="'q/w' has dtype float32"):
        nnc.BaseState.from_arrays({"q/w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="'depth/w' must be one integer"):
        nnc.BaseState.from_arrays({"depth/w": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="outside 0"):
        nnc.BaseState.from_arrays({"device_id": np.array([-1])})


def test_encoder_checks_tca_base_consistency():
    base = tca_base()
    with pytest.raises(ValueError, match="device_id 5 contradicts the base.s device_id 3"):
        nnc.encode(
            {"w": TCA_W}, compress_differences=True, tca=True, device_id=5, base=base
        )
    with pytest.raises(ValueError, match="base has 60 values, tensor has 4"):
        nnc.encode(
            {"w": np.ones((2, 2), np.float32)},
            compress_differences=True,
            tca=True,
            device_id=3,
            base=base,
        )


# --------------------------------------------------------------------------
# inspect


def test_inspect_describes_every_unit():
    units = nnc.inspect(EXAMPLE_B)
    assert [(u["type"], u["offset"], u["size"]) for u in units] == [
        ("STR", 0, 4),
        ("MPS", 4, 8),
        ("TPL", 12, 6),
        ("NDU", 18, 29),
        ("NDU", 47, 31),
    ]
    w_unit = units[3]
    assert w_unit["name"] == "w" and w_unit["shape"] == (2, 3)
    assert (w_unit["qp"], w_unit["dq"], w_unit["payload_type"]) == (-32, True, "FLOAT")
    assert (w_unit["header_size"], w_unit["payload_size"]) == (14, 15)
    assert units[4]["qp"] == -75 and units[4]["parameter_id"] == 1

    int_unit = nnc.inspect(nnc.encode({"n": np.arange(4)}))[3]
    assert int_unit["payload_type"] == "INT" and int_unit["qp"] is None


def test_long_units_are_found_and_flagged():
    big = np.random.default_rng(2).normal(size=(200, 200)).astype(np.float32)
    stream = nnc.encode({"big": big}, qp=-50)
    unit = nnc.inspect(stream)[3]
    assert unit["long_size"] is True and unit["size"] >= 32768
    assert unit["offset"] + unit["size"] == len(stream)
    assert hls.parse_stream(stream).ndus[0].header.dims == (200, 200)


@pytest.mark.parametrize("qp", [-128, -75, -33, -1, 0, 1, 64, 127])
def test_inspect_reads_the_qp_from_the_segment(qp):
    tiny = np.full((2, 2), 1e-3, np.float32)
    stream = nnc.encode({"w": tiny}, qp=qp)
    assert qps_in(stream) == {"w": qp}
    assert nnc.decode(stream)["w"].shape == (2, 2)


def test_raw_float_payloads_decode():
    values = np.array([[1.5, -2.0], [0.0, 3.25]], dtype="<f4")
    header = hls.NDUHeader(hls.PT_RAW_FLOAT, "raw", (2, 2))
    ndu = hls.write_ndu(header, hls.ModelParameterSet(), values.tobytes())
    decoded = nnc.decode(HEAD + ndu)["raw"]
    assert_same_floats(decoded, values.astype(np.float32))
    assert nnc.inspect(HEAD + ndu)[3]["payload_type"] == "RAW_FLOAT"


def test_results_share_no_memory_with_the_inputs():
    ints = np.arange(6, dtype=np.int32).reshape(2, 3)
    floats = W.copy()
    result = nnc.encode_with_reconstruction({"i": ints, "w": floats}, sparsity=0.5)
    assert np.array_equal(floats, W)  # sparsification worked on a copy
    for array in (*result.reconstruction.values(), *result.levels.values()):
        assert not np.shares_memory(array, ints)
        assert not np.shares_memory(array, floats)


def test_device_id_defaults_to_the_bases_and_a_contradiction_is_refused():
    update = {"w": np.linspace(-0.1, 0.1, 48, dtype=np.float32).reshape(6, 8)}
    sender = nnc.BaseState(device_id=3)
    receiver = nnc.BaseState(device_id=3)

    stream = nnc.encode(update, compress_differences=True, tca=True,
                        base=sender, update_base=True)

    assert nnc.inspect(stream)[3]["device_id"] == 3
    nnc.decode(stream, base=receiver, update_base=True)
    assert receiver == sender
    with pytest.raises(ValueError, match="device_id 5 contradicts the base's device_id 3"):
        nnc.encode(update, compress_differences=True, base=sender, device_id=5)
