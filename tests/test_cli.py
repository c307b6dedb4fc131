"""Tests of the ``flwr-nncodec`` command line and of flwr_nncodec.model_io."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flwr_nncodec
from flwr_nncodec import cli, model_io

ENCODE_OPTIONS = ["--qp", "-36", "--no-use-dq"]
API_OPTIONS = {"qp": -36, "use_dq": False}


def small_model() -> dict[str, np.ndarray]:
    """A seeded conv + linear state dict with a bias and an integer counter."""
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.normal(0.0, 0.1, (8, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(0.0, 0.01, 8).astype(np.float32),
        "fc.weight": rng.normal(0.0, 0.05, (10, 72)).astype(np.float32),
        "fc.num_batches_tracked": np.array([12], dtype=np.int32),
    }


def unit_sizes(bitstream: bytes) -> list[int]:
    """nnr_unit_size of each unit, read straight from the framing (§1.2)."""
    sizes, offset = [], 0
    while offset < len(bitstream):
        first = bitstream[offset]
        if first & 0x80:
            size = int.from_bytes(bitstream[offset : offset + 4], "big") & 0x7FFFFFFF
        else:
            size = int.from_bytes(bitstream[offset : offset + 2], "big")
        sizes.append(size)
        offset += size
    assert offset == len(bitstream)
    return sizes


def skip_without_library_for(suffix: str) -> None:
    """Skip unless the library that reads and writes `.suffix` is installed."""
    if suffix == "pt":
        pytest.importorskip("torch")
    if suffix == "safetensors":
        pytest.importorskip("safetensors")


@pytest.fixture(params=["npz", "safetensors", "pt"])
def model_file(request, tmp_path) -> Path:
    skip_without_library_for(request.param)
    path = tmp_path / f"model.{request.param}"
    model_io.save_parameters(path, small_model())
    return path


def test_round_trip_equals_api_reconstruction(model_file, tmp_path, capsys):
    """encode then decode through the CLI gives the API's bytes and reconstruction."""
    stream_path = tmp_path / "model.nnc"
    assert cli.main(["encode", str(model_file), str(stream_path), *ENCODE_OPTIONS]) == 0
    expected = flwr_nncodec.encode_with_reconstruction(small_model(), **API_OPTIONS)
    assert stream_path.read_bytes() == bytes(expected.bitstream)

    for suffix in ("npz", "safetensors", "pt"):
        if suffix == "pt":
            pytest.importorskip("torch")
        out_path = tmp_path / f"restored.{suffix}"
        assert cli.main(["decode", str(stream_path), str(out_path)]) == 0
        restored = model_io.load_parameters(out_path)
        assert list(restored) == list(expected.reconstruction)
        for name, array in expected.reconstruction.items():
            assert restored[name].dtype == array.dtype, name
            np.testing.assert_array_equal(restored[name], array)
    assert "bits/param" in capsys.readouterr().out


def test_codec_options_reach_the_encoder(tmp_path):
    """Each NNCodec-named flag changes the stream exactly as the API option does."""
    source = tmp_path / "model.npz"
    model_io.save_parameters(source, small_model())
    cases = [
        ([], {}),
        (["--qp", "-30", "--use-dq"], {"qp": -30, "use_dq": True}),
        (
            ["--nonweight_qp", "-60", "--no-row-skipping"],
            {"nonweight_qp": -60, "row_skipping": False},
        ),
        (
            ["--no-param-opt", "--qp-density", "2"],
            {"param_opt": False, "qp_density": 2},
        ),
        (["--scan-order", "1"], {"scan_order": 1}),
    ]
    streams = set()
    for index, (flags, options) in enumerate(cases):
        out = tmp_path / f"s{index}.nnc"
        assert cli.main(["-q", "encode", str(source), str(out), *flags]) == 0
        assert out.read_bytes() == flwr_nncodec.encode(small_model(), **options)
        streams.add(out.read_bytes())
    assert len(streams) == len(cases)


def test_thread_count_changes_no_byte(tmp_path):
    """--num-threads reaches encoder and decoder; the output stays the same."""
    import dataclasses

    from flwr_nncodec.options import EncodeOptions

    if "num_threads" not in {f.name for f in dataclasses.fields(EncodeOptions)}:
        pytest.skip("this build of the codec has no num_threads option")
    rng = np.random.default_rng(3)
    model = {
        f"l{i}.weight": rng.normal(0, 0.05, (40, 30)).astype(np.float32)
        for i in range(5)
    }
    source = tmp_path / "model.npz"
    model_io.save_parameters(source, model)
    expected = flwr_nncodec.encode(model, num_threads=1)
    for threads in ("1", "2"):
        stream_path = tmp_path / f"t{threads}.nnc"
        out = tmp_path / f"t{threads}.npz"
        assert (
            cli.main(
                [
                    "-q",
                    "encode",
                    str(source),
                    str(stream_path),
                    "--num-threads",
                    threads,
                ]
            )
            == 0
        )
        assert stream_path.read_bytes() == expected
        assert (
            cli.main(
                ["-q", "decode", str(stream_path), str(out), "--num_threads", threads]
            )
            == 0
        )
        restored = model_io.load_parameters(out)
        for name, array in flwr_nncodec.decode(expected).items():
            np.testing.assert_array_equal(restored[name], array)
    assert (
        cli.main(
            ["encode", str(source), str(tmp_path / "x.nnc"), "--num-threads", "-1"]
        )
        == 1
    )


def test_info_reports_units_bytes_and_qp(tmp_path, capsys):
    """info --json: per-unit and per-tensor byte counts from the framing, shapes, qp."""
    source = tmp_path / "model.npz"
    stream_path = tmp_path / "model.nnc"
    model_io.save_parameters(source, small_model())
    assert (
        cli.main(["-q", "encode", str(source), str(stream_path), *ENCODE_OPTIONS]) == 0
    )
    bitstream = stream_path.read_bytes()
    capsys.readouterr()

    assert cli.main(["info", "--json", str(stream_path)]) == 0
    summary = json.loads(capsys.readouterr().out)

    sizes = unit_sizes(bitstream)
    assert summary["bytes"] == len(bitstream)
    assert [unit["bytes"] for unit in summary["units"]] == sizes
    unit_types = [unit["type"] for unit in summary["units"]]
    assert unit_types == ["STR", "MPS", "TPL", "NDU", "NDU", "NDU", "NDU"]
    # STR, MPS and TPL of a dict stream have fixed sizes (nnc-format §1.3-1.5).
    assert sizes[:3] == [4, 8, 6]
    ndu_fields = [unit["fields"] for unit in summary["units"][3:]]
    assert [fields["parameter_id"] for fields in ndu_fields] == [0, 1, 2, 3]
    assert [fields["dq"] for fields in ndu_fields] == [False] * 4

    tensors = summary["tensors"]
    model = small_model()
    assert [row["name"] for row in tensors] == list(model)
    assert [row["shape"] for row in tensors] == [list(a.shape) for a in model.values()]
    assert [row["bytes"] for row in tensors] == sizes[3:]
    assert [row["params"] for row in tensors] == [a.size for a in model.values()]
    assert [row["qp"] for row in tensors] == [-36, -75, -36, None]
    assert [row["scan_order"] for row in tensors] == [0, 0, 0, 0]
    assert [row["payload_type"] for row in tensors] == ["FLOAT"] * 3 + ["INT"]
    for row, size in zip(tensors, sizes[3:]):
        assert row["bits_per_param"] == pytest.approx(8 * size / row["params"])
    total_params = sum(a.size for a in model.values())
    assert summary["params"] == total_params
    assert summary["bits_per_param"] == pytest.approx(8 * len(bitstream) / total_params)

    assert cli.main(["info", str(stream_path)]) == 0
    table = capsys.readouterr().out
    assert f"{len(bitstream):,} bytes, 7 units" in table
    assert "fc.weight" in table and "10x72" in table


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flwr_nncodec.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_user_errors_exit_1_with_one_line_and_no_traceback(tmp_path):
    """Missing, unsupported and corrupt inputs name the file and the problem."""
    missing = tmp_path / "missing.npz"
    unsupported = tmp_path / "model.txt"
    unsupported.write_text("not a model")
    corrupt_npz = tmp_path / "corrupt.npz"
    corrupt_npz.write_bytes(b"PK\x03\x04 broken")
    parameter_file = tmp_path / "weights.npz"
    model_io.save_parameters(parameter_file, small_model())
    not_a_stream = tmp_path / "junk.nnc"
    not_a_stream.write_bytes(b"\x00\x04\x02\x01" + b"\xff" * 20)

    cases = [
        (
            ["encode", str(missing), str(tmp_path / "a.nnc")],
            [str(missing), "no such file"],
        ),
        (
            ["encode", str(unsupported), str(tmp_path / "b.nnc")],
            [str(unsupported), "unsupported file extension '.txt'"],
        ),
        (
            ["encode", str(corrupt_npz), str(tmp_path / "c.nnc")],
            [str(corrupt_npz), "not a valid .npz archive"],
        ),
        (
            ["decode", str(not_a_stream), str(tmp_path / "d.npz")],
            [str(not_a_stream), "corrupt NNC bitstream"],
        ),
        (["info", str(not_a_stream)], [str(not_a_stream), "corrupt NNC bitstream"]),
        (
            ["info", str(parameter_file)],
            [str(parameter_file), "use 'encode' to code it"],
        ),
        (
            ["decode", str(tmp_path / "none.nnc"), str(tmp_path / "e.npz")],
            ["none.nnc", "no such file"],
        ),
        (
            ["decode", str(not_a_stream), str(tmp_path / "out.bin")],
            ["out.bin", "unsupported file extension '.bin'"],
        ),
        (["info", "/dev/zero"], ["/dev/zero: not a regular file"]),
        (
            ["decode", str(tmp_path), str(tmp_path / "f.npz")],
            [str(tmp_path), "is a directory, not a bitstream file"],
        ),
    ]
    for args, fragments in cases:
        completed = _run_cli(*args)
        assert completed.returncode == 1, (args, completed.stderr)
        assert "Traceback" not in completed.stderr, completed.stderr
        assert completed.stderr.count("\n") == 1, completed.stderr
        for fragment in fragments:
            assert fragment in completed.stderr, (fragment, completed.stderr)
    assert not any(tmp_path.glob("?.nnc")) and not (tmp_path / "d.npz").exists()


def test_unparsable_command_line_is_argparse_usage_exit_2(tmp_path):
    """A value argparse cannot parse exits 2 with the usage; a value the codec
    refuses is a user error (exit 1, one line)."""
    source = tmp_path / "weights.npz"
    model_io.save_parameters(source, small_model())
    unparsable = _run_cli("encode", str(source), str(tmp_path / "a.nnc"),
                          "--scan-order", "x")
    assert unparsable.returncode == 2, unparsable.stderr
    assert "usage: flwr-nncodec encode" in unparsable.stderr
    assert "argument --scan-order: invalid int value: 'x'" in unparsable.stderr

    refused = _run_cli("encode", str(source), str(tmp_path / "b.nnc"),
                       "--scan-order", "5")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "scan_order = 5 is outside the range 0..4" in refused.stderr
    assert not (tmp_path / "a.nnc").exists() and not (tmp_path / "b.nnc").exists()


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a FIFO for reading blocks until a writer appears; the reader
    must refuse it at once instead."""
    fifo = tmp_path / "stream.nnc"
    os.mkfifo(fifo)
    # In a child process: a regression hangs there and times out after 120 s.
    completed = _run_cli("info", str(fifo))
    assert completed.returncode == 1, completed.stderr
    assert "stream.nnc: not a regular file" in completed.stderr


def test_truncated_stream_is_reported(tmp_path, capsys):
    """Every proper prefix of a stream fails cleanly on decode."""
    stream_path = tmp_path / "model.nnc"
    source = tmp_path / "model.npz"
    model_io.save_parameters(source, small_model())
    assert cli.main(["-q", "encode", str(source), str(stream_path)]) == 0
    bitstream = stream_path.read_bytes()
    truncated = tmp_path / "truncated.nnc"
    for cut in (0, 3, 17, 20, len(bitstream) // 2, len(bitstream) - 1):
        truncated.write_bytes(bitstream[:cut])
        out = tmp_path / "out.npz"
        assert cli.main(["decode", str(truncated), str(out)]) == 1
        assert str(truncated) in capsys.readouterr().err
        assert not out.exists()


def test_existing_output_needs_force(tmp_path, capsys):
    """Outputs are never replaced without --force; with it they are."""
    source = tmp_path / "model.npz"
    model_io.save_parameters(source, small_model())
    stream_path = tmp_path / "model.nnc"
    stream_path.write_bytes(b"keep me")
    restored = tmp_path / "restored.npz"
    restored.write_bytes(b"keep me too")

    assert cli.main(["encode", str(source), str(stream_path)]) == 1
    assert "file exists" in capsys.readouterr().err
    assert stream_path.read_bytes() == b"keep me"

    assert cli.main(["-q", "encode", "--force", str(source), str(stream_path)]) == 0
    assert stream_path.read_bytes() == flwr_nncodec.encode(small_model())

    assert cli.main(["decode", str(stream_path), str(restored)]) == 1
    assert restored.read_bytes() == b"keep me too"
    assert cli.main(["-q", "decode", "-f", str(stream_path), str(restored)]) == 0
    assert list(model_io.load_parameters(restored)) == list(small_model())


def test_encode_refuses_a_parameter_file_as_output(tmp_path, capsys):
    """Writing a bitstream into model.npz would look like a model file: refused."""
    source = tmp_path / "model.npz"
    model_io.save_parameters(source, small_model())
    assert cli.main(["encode", str(source), str(tmp_path / "out.npz")]) == 1
    assert "name the output *.nnc" in capsys.readouterr().err


def test_non_numeric_tensor_is_a_user_error(tmp_path, capsys):
    """A boolean mask in the state dict is named in the error."""
    source = tmp_path / "mask.npz"
    model_io.save_parameters(source, {"mask": np.ones((2, 2), dtype=bool)})
    assert cli.main(["encode", str(source), str(tmp_path / "mask.nnc")]) == 1
    assert "'mask' has dtype bool" in capsys.readouterr().err


def test_torch_file_with_objects_is_refused(tmp_path):
    """A pickled module is not unpickled; the error says why."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(model_io.ModelFileError, match="objects other than tensors"):
        model_io.load_parameters(path)


def test_npz_with_object_array_is_refused(tmp_path):
    """allow_pickle stays off: object arrays are an error naming the file."""
    path = tmp_path / "objects.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(model_io.ModelFileError, match=str(path).replace(".", r"\.")):
        model_io.load_parameters(path)


# ---------------------------------------------------------------------------
# adversarial tester's findings


@pytest.mark.parametrize("suffix", ["npz", "safetensors", "pt"])
def test_any_tensor_name_round_trips_through_every_format(tmp_path, suffix):
    """Names that are np.savez keywords ('file', 'allow_pickle') are kept."""
    skip_without_library_for(suffix)
    params = {
        "allow_pickle": np.arange(3, dtype=np.float32),
        "file": np.ones((2, 2), np.float32),
        "w.npy": np.array([7], np.int32),
        "dir/x": np.array([1.5], np.float32),
    }
    path = tmp_path / f"names.{suffix}"
    model_io.save_parameters(path, params)
    loaded = model_io.load_parameters(path)
    assert list(loaded) == list(params)
    for name, array in params.items():
        assert loaded[name].dtype == array.dtype
        assert np.array_equal(loaded[name], array)
    if suffix == "npz":  # numpy reads what we write
        with np.load(path, allow_pickle=False) as archive:
            assert sorted(archive.files) == sorted(params)
            assert np.array_equal(archive["file"], params["file"])


def test_cli_decode_to_npz_keeps_savez_keyword_names(tmp_path):
    stream = tmp_path / "m.nnc"
    stream.write_bytes(
        flwr_nncodec.encode(
            {
                "allow_pickle": np.zeros(3, np.float32),
                "file": np.array([5, -2], np.int32),
            }
        )
    )
    out = tmp_path / "m.npz"
    assert cli.main(["-q", "decode", str(stream), str(out)]) == 0
    loaded = model_io.load_parameters(out)
    assert list(loaded) == ["allow_pickle", "file"]
    assert loaded["file"].tolist() == [5, -2]
    assert loaded["allow_pickle"].tolist() == [0.0, 0.0, 0.0]


def test_output_is_not_written_through_a_planted_symlink(tmp_path):
    """The temp file is created exclusively; a symlink at any name is ignored."""
    stream = tmp_path / "m.nnc"
    stream.write_bytes(flwr_nncodec.encode({"w": np.ones((4, 4), np.float32)}))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.npz.partial.npz").symlink_to(victim)  # the old temp name
    out = tmp_path / "out.npz"
    assert cli.main(["-q", "decode", str(stream), str(out)]) == 0
    assert victim.read_text() == "precious"
    assert not out.is_symlink()
    assert model_io.load_parameters(out)["w"].shape == (4, 4)
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers == {"m.nnc", "victim.txt", ".out.npz.partial.npz", "out.npz"}


def test_torch_quantized_and_sparse_tensors_are_one_line_errors(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    cases = {
        "quant.pt": (
            {"q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)},
            "tensor 'q' is quantized (torch.qint8)",
        ),
        "sparse.pt": (
            {"s": torch.eye(3).to_sparse()},
            "tensor 's' has layout torch.sparse_coo (torch.float32)",
        ),
    }
    for file_name, (state, fragment) in cases.items():
        path = tmp_path / file_name
        torch.save(state, path)
        output = tmp_path / f"{file_name}.nnc"
        assert cli.main(["encode", str(path), str(output)]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and fragment in error, error
        assert not output.exists()


def test_encode_says_larger_when_the_stream_is_bigger(tmp_path, capsys):
    source = tmp_path / "tiny.npz"
    model_io.save_parameters(source, {"file": np.zeros(3, np.float32)})
    assert cli.main(["encode", str(source), str(tmp_path / "tiny.nnc")]) == 0
    stream_bytes = (tmp_path / "tiny.nnc").stat().st_size
    assert stream_bytes > 12
    out = capsys.readouterr().out
    assert f"{stream_bytes / 12:.1f}x larger than 12 input bytes" in out
    assert "smaller" not in out


def test_decode_max_elements_option_raises_the_limit(tmp_path, capsys):
    stream = tmp_path / "m.nnc"
    stream.write_bytes(flwr_nncodec.encode({"w": np.ones((4, 4), np.float32)}))
    out = tmp_path / "m.npz"
    assert cli.main(["decode", "--max-elements", "8", str(stream), str(out)]) == 1
    error = capsys.readouterr().err
    assert "16 elements, more than the limit of 8" in error
    assert "--max-elements" in error
    limited = ["decode", "--max-total-elements", "15", str(stream), str(out)]
    assert cli.main(limited) == 1
    assert "--max-total-elements" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(
        ["-q", "decode", "--max-elements", "2**4", "--max-total-elements", "16",
         str(stream), str(out)]
    ) == 0
    assert model_io.load_parameters(out)["w"].shape == (4, 4)


def test_forced_outputs_replace_a_symlink_instead_of_writing_through_it(tmp_path):
    source = tmp_path / "m.npz"
    model_io.save_parameters(source, {"w": np.ones((4, 4), np.float32)})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    stream = tmp_path / "m.nnc"
    stream.symlink_to(victim)
    restored = tmp_path / "r.npz"
    restored.symlink_to(victim)
    assert cli.main(["-q", "encode", "--force", str(source), str(stream)]) == 0
    assert cli.main(["-q", "decode", "--force", str(stream), str(restored)]) == 0
    assert victim.read_text() == "precious"
    assert not stream.is_symlink() and not restored.is_symlink()
    assert stream.read_bytes() == flwr_nncodec.encode(model_io.load_parameters(source))
    assert model_io.load_parameters(restored)["w"].shape == (4, 4)


def test_bitstream_files_are_bounded_before_reading(tmp_path):
    """A file larger than the read limit is refused by its size, unread."""
    stream = tmp_path / "big.nnc"
    stream.write_bytes(b"\x00" * 1000)
    with pytest.raises(model_io.ModelFileError, match="1,000 bytes, more than the 999"):
        model_io.read_bytes(stream, max_bytes=999)
    assert model_io.read_bytes(stream, max_bytes=1000) == b"\x00" * 1000


def test_version_option():
    completed = _run_cli("--version")
    assert completed.returncode == 0
    assert completed.stdout.strip().startswith("flwr-nncodec 0.1.0")


@pytest.mark.parametrize("suffix, dtype", [
    ("pt", "float16"), ("safetensors", "float16"), ("npz", "float16"),
    ("pt", "bfloat16"), ("safetensors", "bfloat16"),  # .npz: refused, see below
])
def test_decode_dtype_rounds_the_floats_and_keeps_the_ints(tmp_path, suffix, dtype):
    """--dtype stores the float tensors in that dtype, rounded from the float32
    reconstruction; integer tensors keep int32."""
    torch = pytest.importorskip("torch")
    if suffix == "safetensors":
        pytest.importorskip("safetensors")
    stream = tmp_path / "m.nnc"
    # A fine step (2^-15), so that the reconstructions need more mantissa bits
    # than float16 or bfloat16 hold and the dtype has to round them.
    stream.write_bytes(flwr_nncodec.encode(small_model(), qp=-60, use_dq=False))
    reference = flwr_nncodec.decode(stream.read_bytes())
    out = tmp_path / f"m.{suffix}"

    assert cli.main(["-q", "decode", "--dtype", dtype, str(stream), str(out)]) == 0

    if suffix == "pt":
        stored = torch.load(out, weights_only=True)
    elif suffix == "safetensors":
        import safetensors.torch

        stored = safetensors.torch.load_file(out)
    else:
        stored = {k: torch.from_numpy(v) for k, v in np.load(out).items()}
    assert sorted(stored) == sorted(reference)
    torch_dtype = getattr(torch, dtype)
    for name, value in reference.items():
        if value.dtype == np.int32:
            assert stored[name].dtype == torch.int32
            np.testing.assert_array_equal(stored[name].numpy(), value)
            continue
        assert stored[name].dtype == torch_dtype, name
        expected = torch.from_numpy(value).to(torch_dtype)
        assert torch.equal(stored[name], expected), name
        assert not torch.equal(stored[name].float(), torch.from_numpy(value)), name


def test_decode_bfloat16_to_npz_is_refused_before_decoding(tmp_path, capsys):
    stream = tmp_path / "m.nnc"
    stream.write_bytes(b"not a stream at all")  # never read: refused first
    out = tmp_path / "m.npz"

    code = cli.main(["decode", "--dtype", "bfloat16", str(stream), str(out)])

    assert code != 0
    assert ".npz cannot hold bfloat16" in capsys.readouterr().err
    assert not out.exists()


def test_decode_float32_by_default(tmp_path):
    stream = tmp_path / "m.nnc"
    stream.write_bytes(flwr_nncodec.encode(small_model(), **API_OPTIONS))
    out = tmp_path / "m.npz"
    assert cli.main(["-q", "decode", str(stream), str(out)]) == 0
    stored = model_io.load_parameters(out)
    for name, value in flwr_nncodec.decode(stream.read_bytes()).items():
        assert stored[name].dtype == value.dtype
        np.testing.assert_array_equal(stored[name], value)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc] unexpected pos"),  # torch
])
def test_a_failed_write_leaves_no_file(tmp_path, overwrite, failure):
    """A full disk mid-write (OSError, or PyTorch's RuntimeError) is a one-line
    ModelFileError, and neither the output nor a temp file stays behind."""
    out = tmp_path / "m.nnc"

    def write_then_fail(handle) -> None:
        handle.write(b"\x00" * 4096)
        raise failure

    with pytest.raises(model_io.ModelFileError, match=r"m\.nnc: cannot write: "):
        model_io._write_via_temp(out, write_then_fail, overwrite)
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_without_force_refuses_a_name_that_appears_meanwhile(
    tmp_path, monkeypatch
):
    """The temp file gets the final name by os.link, which refuses an existing
    name, also one created between the check and the rename."""
    out = tmp_path / "m.nnc"
    real_write = model_io._write_via_temp

    def racing_write(path, write, overwrite=True):
        def write_and_race(handle) -> None:
            write(handle)
            path.write_bytes(b"someone else's")

        real_write(path, write_and_race, overwrite)

    monkeypatch.setattr(model_io, "_write_via_temp", racing_write)
    with pytest.raises(model_io.ModelFileError, match="file exists"):
        model_io.write_bytes(out, b"stream")
    assert out.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nnc"]


def test_directories_are_named_as_such(tmp_path, capsys):
    stream = tmp_path / "m.nnc"
    stream.write_bytes(flwr_nncodec.encode({"w": np.ones((4, 4), np.float32)}))
    folder = tmp_path / "out.npz"
    folder.mkdir()

    assert cli.main(["decode", str(stream), str(folder)]) == 1
    assert "out.npz: is a directory" in capsys.readouterr().err
    assert cli.main(["encode", str(folder), str(tmp_path / "x.nnc")]) == 1
    assert "out.npz: is a directory, not a parameter file" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


def test_quiet_works_after_the_command_too(tmp_path, capsys):
    source = tmp_path / "m.npz"
    model_io.save_parameters(source, {"w": np.ones((4, 4), np.float32)})
    assert cli.main(["encode", "-q", str(source), str(tmp_path / "a.nnc")]) == 0
    assert cli.main(["-q", "encode", str(source), str(tmp_path / "b.nnc")]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["encode", str(source), str(tmp_path / "c.nnc")]) == 0
    assert "bits/param" in capsys.readouterr().out


def test_a_tensor_that_quantises_to_zeros_is_warned_about(tmp_path, caplog):
    source = tmp_path / "m.npz"
    tiny = np.full((8, 8), 1e-6, np.float32)
    model_io.save_parameters(source, {"tiny": tiny, "w": np.ones((8, 8), np.float32)})

    with caplog.at_level("WARNING"):
        assert cli.main(["-q", "encode", str(source), str(tmp_path / "m.nnc")]) == 0

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "tensor 'tiny' decodes to all zeros (max |x| = 1e-06" in warnings[0]


@pytest.mark.parametrize("dtype, element_bytes", [
    ("bfloat16", 2), ("float16", 2), ("float64", 8), ("float8_e4m3fn", 1),
])
def test_input_bytes_count_the_files_own_dtype(tmp_path, capsys, dtype, element_bytes):
    """bf16 and float8 tensors are widened to float32 to code them; the
    reported input size is still their size in the file."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch, dtype):
        pytest.skip(f"this torch has no {dtype}")
    values = torch.linspace(-1, 1, 256).reshape(16, 16).to(getattr(torch, dtype))
    source = tmp_path / "m.pt"
    torch.save({"w": values}, source)
    out = tmp_path / "m.nnc"

    assert cli.main(["encode", str(source), str(out)]) == 0

    assert f"{256 * element_bytes:,} input bytes" in capsys.readouterr().out
    # The widened values are coded as the API codes them (exactly).
    expected = flwr_nncodec.encode_with_reconstruction({"w": values.float().numpy()})
    assert out.read_bytes() == bytes(expected.bitstream)


def test_force_writes_into_a_fifo_without_replacing_it(tmp_path):
    """A character device or FIFO output (/dev/null, a pipe) is written into;
    its node stays (before, --force replaced it by a regular file)."""
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()

    model_io.write_bytes(fifo, b"an nnc stream", overwrite=True)
    reader.join(timeout=10)

    assert received == [b"an nnc stream"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A parameter file is never written into a pipe: it is refused.
    model_fifo = tmp_path / "m.npz"
    os.mkfifo(model_fifo)
    with pytest.raises(model_io.ModelFileError, match="not a regular file"):
        model_io.save_parameters(model_fifo, {"w": np.ones(2, np.float32)},
                                 overwrite=True)
    assert stat.S_ISFIFO(os.lstat(model_fifo).st_mode)


def test_a_long_output_name_is_written(tmp_path):
    out = tmp_path / ("a" * 245 + ".nnc")  # 249 bytes: NAME_MAX is 255
    model_io.write_bytes(out, b"stream")
    assert out.read_bytes() == b"stream"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_float16_output_refuses_values_it_cannot_hold(tmp_path, capsys):
    stream = tmp_path / "m.nnc"
    values = np.array([[1e6, -7e4], [1.0, 0.5]], np.float32)
    stream.write_bytes(flwr_nncodec.encode({"big": values}, qp=-60))
    out = tmp_path / "m.npz"

    assert cli.main(["decode", "--dtype", "float16", str(stream), str(out)]) == 1

    error = capsys.readouterr().err
    assert "tensor 'big' holds values up to 1e+06, beyond float16's 65504" in error
    assert not out.exists()


def test_widened_tensors_get_one_line_per_dtype(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    bf16 = torch.ones(4, 4, dtype=torch.bfloat16)
    state = {f"layer{i}.weight": bf16.clone() for i in range(50)}
    state["head"] = torch.ones(2, 2)
    source = tmp_path / "m.pt"
    torch.save(state, source)

    with caplog.at_level("INFO"):
        loaded = model_io.load_parameters(source)

    lines = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert lines == [
        f"{source}: 50 bfloat16 tensor(s) converted to float32 "
        "('layer0.weight', 'layer1.weight', 'layer2.weight', ...)"
    ]
    assert loaded.source_nbytes == 50 * 16 * 2 + 4 * 4


def _model_with_integer_buffers() -> dict[str, np.ndarray]:
    """small_model() with a torch-style 0-d int64 counter and a uint8 mask."""
    model = {k: v for k, v in small_model().items() if "num_batches" not in k}
    model["bn.num_batches_tracked"] = np.array(12, dtype=np.int64)
    model["mask"] = np.array([[0, 1, 255]], dtype=np.uint8)
    return model


@pytest.mark.parametrize("suffix", ["npz", "safetensors", "pt"])
def test_decode_like_restores_scalar_shapes_and_integer_dtypes(tmp_path, suffix):
    skip_without_library_for(suffix)
    model = _model_with_integer_buffers()
    source = tmp_path / f"m.{suffix}"
    model_io.save_parameters(source, model)
    stream = tmp_path / "m.nnc"
    assert cli.main(["-q", "encode", str(source), str(stream), *ENCODE_OPTIONS]) == 0

    # Without a reference: NNC's scalar shape (1,) and int32.
    plain = tmp_path / f"plain.{suffix}"
    assert cli.main(["-q", "decode", str(stream), str(plain)]) == 0
    stored = model_io.load_parameters(plain)
    assert stored["bn.num_batches_tracked"].shape == (1,)
    assert stored["mask"].dtype == np.int32

    restored_path = tmp_path / f"restored.{suffix}"
    like = ["--like", str(source)]
    assert cli.main(["-q", "decode", *like, str(stream), str(restored_path)]) == 0
    restored = model_io.load_parameters(restored_path)
    assert list(restored) == list(model)
    for name, array in model.items():
        assert restored[name].shape == array.shape, name
        if array.dtype.kind == "f":
            assert restored[name].dtype == np.float32
            np.testing.assert_array_equal(
                restored[name], stored[name].reshape(array.shape)
            )
        else:
            assert restored[name].dtype == array.dtype, name
            np.testing.assert_array_equal(restored[name], array)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("fc.weight"), "has no tensor 'fc.weight' of the stream"),
        (
            lambda m: m.update({"fc.weight": np.zeros((10, 71), np.float32)}),
            r"tensor 'fc.weight' has shape \(10, 71\), the stream's has \(10, 72\)",
        ),
        (
            lambda m: m.update({"bn.num_batches_tracked": np.array(0, np.int8)}),
            r"'bn.num_batches_tracked' holds values in \[300, 300\], outside "
            r"int8's \[-128, 127\]",
        ),
        (
            lambda m: m.update({"mask": np.zeros((1, 3), np.bool_)}),
            r"'mask' holds values in \[0, 255\], outside bool's \[0, 1\]",
        ),
    ],
    ids=["missing", "size", "range", "bool"],
)
def test_decode_like_refuses_a_reference_that_does_not_fit(
    tmp_path, capsys, change, message
):
    model = _model_with_integer_buffers()
    model["bn.num_batches_tracked"] = np.array(300, np.int64)
    source = tmp_path / "m.npz"
    model_io.save_parameters(source, model)
    stream = tmp_path / "m.nnc"
    assert cli.main(["-q", "encode", str(source), str(stream), *ENCODE_OPTIONS]) == 0
    reference = dict(model)
    change(reference)
    reference_path = tmp_path / "ref.npz"
    model_io.save_parameters(reference_path, reference)
    out = tmp_path / "out.npz"

    code = cli.main(["decode", "--like", str(reference_path), str(stream), str(out)])

    assert code == cli.EXIT_USER_ERROR
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_decode_like_gives_back_a_torch_state_dicts_shapes_and_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
    model.train()
    model(torch.randn(4, 16))  # num_batches_tracked becomes 1
    source = tmp_path / "model.pt"
    torch.save(model.state_dict(), source)
    stream = tmp_path / "model.nnc"
    assert cli.main(["-q", "encode", str(source), str(stream)]) == 0

    plain, restored = tmp_path / "plain.pt", tmp_path / "restored.pt"
    assert cli.main(["-q", "decode", str(stream), str(plain)]) == 0
    like = ["--like", str(source)]
    assert cli.main(["-q", "decode", *like, str(stream), str(restored)]) == 0

    counter = "1.num_batches_tracked"
    plain_state = torch.load(plain, weights_only=True)
    assert plain_state[counter].shape == (1,)
    assert plain_state[counter].dtype == torch.int32
    state = torch.load(restored, weights_only=True)
    original = model.state_dict()
    for name, tensor in original.items():
        assert state[name].shape == tensor.shape, name
        assert state[name].dtype == tensor.dtype, name
    assert torch.equal(state[counter], original[counter])
    fresh = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
    fresh.load_state_dict(state)
    assert torch.equal(fresh[1].num_batches_tracked, original[counter])


def test_decode_like_names_an_unreadable_reference(tmp_path, capsys):
    stream = tmp_path / "m.nnc"
    stream.write_bytes(b"never decoded")  # the reference fails first
    missing = tmp_path / "missing.pt"
    out = tmp_path / "out.npz"

    code = cli.main(["decode", "--like", str(missing), str(stream), str(out)])

    assert code == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == (
        f"flwr-nncodec decode: error: --like {missing}: no such file"
    )
    assert not out.exists()
