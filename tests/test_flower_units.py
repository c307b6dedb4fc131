"""Units of the Flower layer: options, manifests, payload framing, accounting."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord
from flwr_nncodec.strategies.traffic import RoundTraffic, config_bytes

import flwr_nncodec as nnc
from flwr_nncodec import flower_link as link
from flwr_nncodec import hls
from flwr_nncodec.flower_options import NNCOptions


def test_options_defaults_follow_fl_py_except_row_skipping():
    """Defaults are NNCodec fl.py's (nnc-format §5.1), with row skipping on."""
    options = NNCOptions()
    assert (options.qp, options.diff_qp, options.nonweight_qp) == (-26, -26, -75)
    assert (options.sparsity, options.struct_spars_factor) == (0.6, 0.9)
    assert options.use_dq is False and options.tca and options.err_accumulation
    assert options.compress_differences and options.compress_upstream
    assert options.row_skipping is True


def test_options_round_trip_through_config():
    """to_config / from_config preserve every field under nnc.<name> keys."""
    options = NNCOptions(diff_qp=-40, sparsity=0.25, tca=False)
    config = ConfigRecord(options.to_config())
    assert config["nnc.diff_qp"] == -40
    assert NNCOptions.from_config(config) == options


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"qp": -129}, r"qp must lie in \[-128, 127\], got -129"),
        ({"sparsity": 1.0}, r"sparsity must lie in \[0, 1\), got 1.0"),
        ({"struct_spars_factor": -0.5}, r"got -0.5"),
        ({"use_dq": 1}, r"use_dq must be bool, got 1"),
        ({"diff_qp": True}, r"diff_qp must be int, got True"),
        ({"lambda_scale": -0.1}, r"lambda_scale must lie in \[0, 1e\+06\], got -0.1"),
        ({"scan_order": 5}, r"scan_order must lie in \[0, 4\], got 5"),
        ({"scan_order": 1.0}, r"scan_order must be int, got 1.0"),
    ],
    ids=[
        "qp-below-8-bit",
        "sparsity-one",
        "negative-gain",
        "int-as-bool",
        "bool-as-int",
        "negative-lambda",
        "scan-order-5",
        "scan-order-float",
    ],
)
def test_options_reject_bad_values_naming_them(overrides, message):
    """Invalid options raise and name the value received."""
    with pytest.raises((TypeError, ValueError), match=message):
        NNCOptions(**overrides)


def test_lambda_scale_reaches_the_encoder():
    """The link codes with the option's lambda_scale: 0 is the codec's MSE choice."""
    rng = np.random.default_rng(5)
    update = {"w": rng.laplace(0.0, 0.01, (64, 48)).astype(np.float32)}
    manifest = link.manifest_of(update)

    for lambda_scale in (0.0, 2.0):
        options = NNCOptions(compress_differences=False, qp=-24, sparsity=0.0,
                             struct_spars_factor=0.0, lambda_scale=lambda_scale)
        bitstream, _, _ = link.encode_update(
            update, manifest, options, base=None, device_id=0, sparsify=False
        )
        expected = nnc.encode({"0": update["w"]}, qp=-24, nonweight_qp=-75,
                              use_dq=False, lambda_scale=lambda_scale)
        assert bitstream == expected
    round_trip = NNCOptions.from_config(NNCOptions(lambda_scale=0.0).to_config())
    assert round_trip.lambda_scale == 0.0


def test_scan_order_reaches_the_encoder_and_decodes_through_the_link():
    """scan_order codes float matrices in block scans on both links; the
    receiving end needs no option (the NDU header says)."""
    rng = np.random.default_rng(6)
    update = {"w": rng.normal(0.0, 0.01, (80, 40)).astype(np.float32),
              "b": rng.normal(0.0, 0.01, 40).astype(np.float32)}
    manifest = link.manifest_of(update)
    options = NNCOptions(compress_differences=False, qp=-30, sparsity=0.0,
                         struct_spars_factor=0.0, scan_order=2)
    assert NNCOptions.from_config(options.to_config()) == options

    bitstream, reconstruction, _ = link.encode_update(
        update, manifest, options, base=None, device_id=0, sparsify=False
    )
    expected = nnc.encode({"0": update["w"], "1": update["b"]}, qp=-30,
                          nonweight_qp=-75, use_dq=False, scan_order=2)
    assert bitstream == expected
    headers = [unit.header for unit in hls.parse_stream(bitstream).ndus]
    assert [h.scan_order for h in headers] == [2, 0]  # 1-D stays raster
    assert len(headers[0].entry_points) == 80 // 16 - 1
    decoded = link.decode_update(bitstream, manifest, base=None)
    for name in update:
        np.testing.assert_array_equal(decoded[name], reconstruction[name])


def test_streams_name_tensors_by_manifest_position():
    """NDUs carry "0", "1", ... instead of the model's names; each end maps
    them back through the manifest, and every name byte saved is a byte off
    the stream."""
    rng = np.random.default_rng(8)
    update = {
        "layers.0.attention.wq.weight": rng.normal(0, 0.01, (8, 6)).astype(np.float32),
        "layers.0.attention_norm.weight": rng.normal(0, 0.01, 6).astype(np.float32),
    }
    manifest = link.manifest_of(update)
    options = NNCOptions(compress_differences=False, qp=-30, sparsity=0.0,
                         struct_spars_factor=0.0)
    bitstream, reconstruction, _ = link.encode_update(
        update, manifest, options, base=None, device_id=0, sparsify=False
    )

    assert [u["name"] for u in nnc.inspect(bitstream) if u["type"] == "NDU"] == [
        "0", "1"
    ]
    decoded = link.decode_update(bitstream, manifest, base=None)
    assert list(decoded) == list(update)
    for name in update:
        np.testing.assert_array_equal(decoded[name], reconstruction[name])
    named = nnc.encode(update, qp=-30, nonweight_qp=-75, use_dq=False)
    saved = sum(len(name) - 1 for name in update)
    assert len(named) - len(bitstream) == saved


def test_options_from_config_rejects_wrong_type():
    """A config value of the wrong type names its key."""
    with pytest.raises(TypeError, match="nnc.tca must be bool"):
        NNCOptions.from_config({"nnc.tca": "yes"})


def test_manifest_round_trip_and_counts():
    """Manifests keep names, dtypes and shapes, 0-d included."""
    arrays = {
        "w": np.zeros((3, 4), np.float32),
        "b": np.zeros(3, np.float64),
        "n": np.array(7, np.int64),
    }
    manifest = link.manifest_of(arrays)
    assert link.manifest_from_json(link.manifest_to_json(manifest)) == manifest
    assert link.count_parameters(manifest) == 12 + 3 + 1
    assert manifest[2].shape == ()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"w": 1}),
        json.dumps([["w", "float32", [-1]]]),
        json.dumps([["w", "object", [1]]]),
        json.dumps([["w", "float32", [2]], ["w", "float32", [2]]]),
        json.dumps([["w", "float32", [1 << 20, 1 << 20]]]),
    ],
    ids=["not-json", "not-a-list", "negative-dim", "bad-dtype", "duplicate", "too-big"],
)
def test_manifest_from_json_rejects_malformed(text):
    """Untrusted manifests are checked field by field."""
    with pytest.raises(link.LinkError, match="nnc.manifest"):
        link.manifest_from_json(text)


def test_segments_pack_and_unpack():
    """Several bitstreams share one payload Array and come back identical."""
    segments = [b"abc", b"", b"\x00\xff" * 5]
    array, lengths, crc32 = link.pack_segments(segments)
    assert array.stype == link.PAYLOAD_STYPE and array.shape == (13,)
    assert lengths == [3, 0, 10] and crc32 == zlib.crc32(b"".join(segments))
    assert link.unpack_segments(array, lengths, crc32) == segments


@pytest.mark.parametrize(
    "lengths, crc_delta, message",
    [
        ([3, 9], 0, "does not split a 13-byte payload"),
        ([3, -1, 11], 0, "does not split"),
        ("13", 0, "does not split"),
        ([13], 1, "CRC-32"),
    ],
    ids=["short-lengths", "negative-length", "not-a-list", "bad-crc"],
)
def test_unpack_segments_rejects_inconsistent_framing(lengths, crc_delta, message):
    """Lengths must tile the payload exactly and the CRC must match."""
    array, _, crc32 = link.pack_segments([b"abc", b"\x00\xff" * 5])
    with pytest.raises(link.LinkError, match=message):
        link.unpack_segments(array, lengths, crc32 + crc_delta)


def test_unpack_segments_rejects_foreign_stype():
    """A plain numpy Array is not taken for a payload."""
    with pytest.raises(link.LinkError, match="stype"):
        link.unpack_segments(Array(np.zeros(3, np.uint8)), [3], 0)


def test_decode_update_rejects_tensors_outside_the_manifest():
    """A stream naming an unknown tensor is refused, not merged."""
    from flwr_nncodec import encode

    manifest = link.manifest_of({"w": np.zeros((2, 2), np.float32)})
    bitstream = encode({"v": np.ones((2, 2), np.float32)}, qp=-40)
    with pytest.raises(link.LinkError, match=r"'v', not a tensor number .*\(0\.\.0\)"):
        link.decode_update(bitstream, manifest, base=None)


def test_decode_update_fills_dropped_tensors_with_zeros():
    """Differential streams drop all-zero tensors; they come back as zeros."""
    arrays = {"w": np.ones((2, 3), np.float32), "z": np.zeros((4, 4), np.float32)}
    manifest = link.manifest_of(arrays)
    options = NNCOptions(diff_qp=-60, sparsity=0.0, struct_spars_factor=0.0)
    bitstream, reconstruction, _ = link.encode_update(
        arrays, manifest, options, base=None, device_id=1, sparsify=False
    )
    decoded = link.decode_update(bitstream, manifest, base=None)
    assert set(decoded) == {"w", "z"}
    np.testing.assert_array_equal(decoded["z"], np.zeros((4, 4), np.float32))
    for name in arrays:
        np.testing.assert_array_equal(decoded[name], reconstruction[name])


def test_round_traffic_figures():
    """Ratios and bits per parameter follow from counted bytes and transfers."""
    traffic = RoundTraffic(server_round=1, num_parameters=1000)
    train = traffic.phase("train")
    train.bytes_down, train.messages_down = 1000, 2
    train.bytes_up, train.models_up = 500, 2
    figures = traffic.summary()
    assert figures["bytes_float32"] == 4 * 1000 * 4
    assert figures["ratio"] == pytest.approx(16000 / 1500)
    train.config_bytes_down, train.config_bytes_up = 300, 200
    assert traffic.summary()["ratio_with_config"] == pytest.approx(16000 / 2000)
    assert figures["bits_per_param_down"] == pytest.approx(8 * 1000 / 2000)
    assert figures["bits_per_param_up"] == pytest.approx(8 * 500 / 2000)


def test_config_bytes_counts_like_flower_and_allows_empty_lists():
    """Same count as ConfigRecord.count_bytes, plus empty lists."""
    entries = {"nnc.version": 3, "nnc.kind": "delta", "nnc.tca": True, "nnc.s": [1, 2]}
    assert config_bytes(entries) == ConfigRecord(entries).count_bytes()
    assert config_bytes({"nnc.segments": []}) == len("nnc.segments")


def _stream_with_shape(name: str, dims: tuple[int, ...]) -> bytes:
    # One float NDU with the given header dims and a one-byte payload: enough
    # for the header parser, whatever the decoder would then make of it.
    from flwr_nncodec import hls

    mps = hls.ModelParameterSet(qp_density=2, quantization_parameter=-32)
    header = hls.NDUHeader(payload_type=hls.PT_FLOAT, name=name, dims=dims, dq_flag=1)
    return b"".join(
        [
            hls.write_start_unit(),
            hls.write_mps(mps),
            hls.write_topology(),
            hls.write_ndu(header, mps, b"\x00"),
        ]
    )


class _DecodeSpy:
    """Stands in for codec.decode: records the limits, decodes for real."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[dict] = []

    def __call__(self, bitstream, **kwargs):
        self.calls.append(kwargs)
        return self.real(bitstream, **kwargs)


@pytest.fixture
def decode_spy(monkeypatch):
    import flwr_nncodec.codec as codec

    spy = _DecodeSpy(codec.decode)
    monkeypatch.setattr(codec, "decode", spy)
    return spy


@pytest.mark.parametrize(
    "name, dims, message",
    [
        # a legitimately coded tensor 4096x the model's size (a decompression bomb)
        ("0", (2, 1 << 27), "element|shape"),
        # zero-sized NDU with a huge first dimension (hangs the C++ decoder)
        ("0", (1 << 40, 0), r"shape \(1099511627776, 0\)"),
        ("0", (3, 2), r"#0 'w' has shape \(3, 2\), the model's is \(2, 3\)"),
        ("w", (2, 3), "'w', not a tensor number"),
    ],
)
def test_decode_update_checks_headers_before_decoding(decode_spy, name, dims, message):
    """A stream whose NDUs do not match the manifest never reaches the decoder."""
    manifest = link.manifest_of({"w": np.zeros((2, 3), np.float32)})
    bitstream = _stream_with_shape(name, dims)
    assert len(bitstream) < 64

    with pytest.raises(ValueError, match=message):
        link.decode_update(bitstream, manifest, base=None)
    assert decode_spy.calls == []


def test_decode_update_rejects_int_payload_for_float_tensor(decode_spy):
    from flwr_nncodec import encode

    manifest = link.manifest_of({"w": np.zeros(4, np.float32)})
    bitstream = encode({"0": np.arange(4, dtype=np.int32)})
    with pytest.raises(link.LinkError, match="payload type INT, the model's dtype"):
        link.decode_update(bitstream, manifest, base=None)
    assert decode_spy.calls == []


def test_decode_update_bounds_the_decoder_by_the_manifest(decode_spy):
    """A fitting stream decodes with limits of the model's sizes."""
    arrays = {
        "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "b": np.float32(0.5).reshape(()),
        "steps": np.array([7, 9], np.int64),
    }
    manifest = link.manifest_of(arrays)
    options = NNCOptions(diff_qp=-60, sparsity=0.0, struct_spars_factor=0.0)
    bitstream, reconstruction, _ = link.encode_update(
        arrays, manifest, options, base=None, device_id=1, sparsify=False
    )

    decoded = link.decode_update(bitstream, manifest, base=None)

    assert [(c["max_elements"], c["max_total_elements"]) for c in decode_spy.calls] == [
        (12, 15)
    ]
    assert decoded["b"].shape == () and decoded["steps"].tolist() == [7, 9]
    for name in arrays:
        np.testing.assert_array_equal(decoded[name], reconstruction[name])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"w": np.zeros((3, 2), np.float32)}, r"'w' has shape \(3, 2\)"),
        ({"w": np.zeros((2, 3), np.float64)}, "'w' has dtype float64"),
        ({"w": np.full((2, 3), np.inf, np.float32)}, "'w' holds non-finite"),
        ({"v": np.zeros((2, 3), np.float32)}, r"lacks tensors \['w'\]"),
        ({}, r"lacks tensors \['w'\]"),
    ],
)
def test_check_plain_model_names_the_bad_tensor(arrays, message):
    manifest = link.manifest_of({"w": np.zeros((2, 3), np.float32)})
    with pytest.raises(link.LinkError, match=message):
        link.check_plain_model(arrays, manifest, "reply")
    link.check_plain_model({"w": np.ones((2, 3), np.float32)}, manifest, "reply")


def test_quantizer_step_matches_the_core():
    from flwr_nncodec import _core
    from flwr_nncodec.flower_options import quantizer_step

    for qp in (-128, -26, 0, 5, 63, 64, 127):
        level_one = _core.dequantize(np.array([1], np.int32), qp, 2)
        assert quantizer_step(qp) == pytest.approx(float(level_one[0]), rel=1e-6)


def test_coarse_weight_qp_warns_once_at_the_server(caplog):
    """qp=127 makes every update quantise to zero; the server says so at start."""
    from flwr_nncodec.strategies.server_codec import NNCServerCodec

    caplog.set_level("WARNING", logger="flwr")
    NNCServerCodec(NNCOptions(qp=127, diff_qp=-26))
    NNCServerCodec(NNCOptions(qp=63, diff_qp=-26))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "qp=127 gives a quantiser step of 3.76e+09" in warnings[0]
    assert "quantises to zero" in warnings[0]


def test_coarse_uplink_override_warns(caplog):
    from flwr_nncodec import NNCMod

    caplog.set_level("WARNING", logger="flwr")
    NNCMod(diff_qp=100)
    messages = [r.getMessage() for r in caplog.records]
    assert any("diff_qp=100 gives a quantiser step" in m for m in messages)


def test_plain_tensors_round_trip_beside_the_stream():
    """uint64 and out-of-int32 updates travel plain and decode exactly."""
    arrays = {
        "w": np.ones((2, 3), np.float32),
        "big": np.array([2**40, -(2**35)], np.int64),
        "u": np.array([2**63 + 1], np.uint64),
        "small": np.array([1, -2], np.int64),
    }
    manifest = link.manifest_of(arrays)
    options = NNCOptions(diff_qp=-60, sparsity=0.0, struct_spars_factor=0.0)
    bitstream, reconstruction, plain = link.encode_update(
        link.to_reference(arrays, manifest),
        manifest,
        options,
        base=None,
        device_id=1,
        sparsify=False,
    )
    assert sorted(plain) == ["big", "u"]
    record, lengths, crc32 = link.payload_record([bitstream], [plain])
    keys = [link.PAYLOAD_KEY, "nnc.plain/0/big", "nnc.plain/0/u"]
    assert sorted(record.keys()) == keys

    segments, plains = link.unpack_payload(record, lengths, crc32, expected=1)
    decoded = link.decode_update(segments[0], manifest, base=None, plain=plains[0])

    assert decoded["big"].tolist() == [2**40, -(2**35)]
    assert decoded["u"].dtype == np.uint64 and decoded["u"].tolist() == [2**63 + 1]
    assert decoded["small"].tolist() == [1, -2]
    for name in arrays:
        np.testing.assert_array_equal(decoded[name], reconstruction[name])


@pytest.mark.parametrize(
    "plain, message",
    [
        ({"w": np.ones((2, 3), np.float32)}, "'w' is not an integer model tensor"),
        ({"n": np.ones(3, np.int64)}, r"'n' is int64\[3\], expected int64\[2\]"),
        ({"n": np.ones(2, np.float64)}, r"'n' is float64\[2\]"),
        ({"x": np.ones(2, np.int64)}, "'x' is not an integer model tensor"),
        ({"n": np.ones(2, np.int64)}, r"\['n'\] come both coded and plain"),
    ],
)
def test_decode_update_rejects_bad_plain_tensors(plain, message):
    arrays = {"w": np.ones((2, 3), np.float32), "n": np.array([4, 5], np.int64)}
    manifest = link.manifest_of(arrays)
    options = NNCOptions(diff_qp=-60, sparsity=0.0, struct_spars_factor=0.0)
    bitstream, _, _ = link.encode_update(
        arrays, manifest, options, base=None, device_id=1, sparsify=False
    )
    with pytest.raises(link.LinkError, match=message):
        link.decode_update(bitstream, manifest, base=None, plain=plain)


@pytest.mark.parametrize(
    "key", ["evil", "nnc.plain/1/n", "nnc.plain/x/n", "nnc.plain/0/"]
)
def test_unpack_payload_rejects_foreign_arrays(key):
    record, lengths, crc32 = link.payload_record([b"abc"], [{}])
    record[key] = Array(np.zeros(2, np.int64))
    with pytest.raises(link.LinkError, match="unexpected array"):
        link.unpack_payload(record, lengths, crc32, expected=1)


def test_codec_errors_name_the_model_tensor():
    """A broken stream's error quotes the wire number and the model's name."""
    arrays = {
        "a": np.zeros((2, 2), np.float32),
        "layers.1.w": np.ones((4, 5), np.float32),
    }
    manifest = link.manifest_of(arrays)
    options = NNCOptions(compress_differences=False, qp=-40, sparsity=0.0,
                         struct_spars_factor=0.0)
    bitstream, _, _ = link.encode_update(
        arrays, manifest, options, base=None, device_id=0, sparsify=False
    )
    broken = bitstream[:-1] + b"\x00"  # no stop bit at the end of tensor 1
    with pytest.raises(link.LinkError, match=r"'1'.*\(tensor 1 is 'layers.1.w'\)"):
        link.decode_update(broken, manifest, base=None)
