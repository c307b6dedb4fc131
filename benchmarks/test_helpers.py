"""Checks of the benchmark's own arithmetic: ``pytest benchmarks/test_helpers.py``.

Not part of the default suite (testpaths = tests); run it after changing
entropy.py, rd_bound.py or the equal-MSE interpolation in run.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from entropy import (  # noqa: E402
    DQ_NEXT_STATE,
    dq_states_and_levels,
    entropy_bits,
    levels_entropy_bytes,
)
from nncodec_worker import SpeedServer, run_jobs  # noqa: E402
from rd_bound import (  # noqa: E402
    SourceDensity,
    entropy_power,
    gaussian_entropy_bits,
    laplace_entropy_bits,
    shannon_lower_bound_bits,
    water_filling_bound_bits,
    water_level,
)
from run import (  # noqa: E402
    BenchmarkError,
    NNCodecSpeedServer,
    equal_mse_bytes,
    format_rd_verdict,
    paired_ratios,
    probe_memory,
    rd_bound_row,
    rd_bound_verdicts,
    run_nncodec_worker,
    synthetic_cases,
)


def _states_and_levels_by_loop(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The DQ rule of nnc-format §2.3, one parameter at a time."""
    state, states, levels = 0, [], []
    for value in q.tolist():
        sign = (value > 0) - (value < 0)
        level = (value + sign * (state & 1)) >> 1
        states.append(state)
        levels.append(level)
        state = int(DQ_NEXT_STATE[state, level & 1])
    return np.array(states), np.array(levels)


@pytest.mark.parametrize("count", [1, 2, 3, 8, 33, 4097])
def test_prefix_scan_matches_the_sequential_state_machine(count):
    rng = np.random.default_rng(count)
    q = rng.integers(-40, 41, size=count)
    q[rng.random(count) < 0.4] = 0
    states, levels = dq_states_and_levels(q)
    expected_states, expected_levels = _states_and_levels_by_loop(q)
    np.testing.assert_array_equal(states, expected_states)
    np.testing.assert_array_equal(levels, expected_levels)


def test_worked_example_a_levels():
    """Worked example A (nnc-format §1.9): the levels and states of its 6 values."""
    states, levels = dq_states_and_levels(np.array([26, -52, 0, 13, 76, -3]))
    np.testing.assert_array_equal(levels, [13, -26, 0, 7, 38, -2])
    np.testing.assert_array_equal(states, [0, 2, 1, 7, 6, 3])


def test_entropy_values():
    assert entropy_bits(np.array([0, 1, 0, 1])) == pytest.approx(4.0)
    assert entropy_bits(np.array([5, 5, 5])) == pytest.approx(0.0)
    # Given the context the symbol is certain: 0 bits.
    assert entropy_bits(
        np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1])
    ) == pytest.approx(0.0)
    # Context independent of the symbol: H(K|S) = H(K) = 1 bit each.
    assert entropy_bits(
        np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    ) == pytest.approx(4.0)
    # Per-tensor sums: two constant tensors cost nothing, together they would not.
    assert levels_entropy_bytes({"a": np.zeros(8), "b": np.ones(8)}, dq=False) == 0.0


def test_equal_mse_interpolation():
    sweep = [
        {"qp": -40, "mse": 1e-6, "bytes": 4000},
        {"qp": -36, "mse": 4e-6, "bytes": 1000},
    ]
    size, method = equal_mse_bytes(sweep, 2e-6)
    assert size == pytest.approx(2000.0)  # halfway in log MSE -> geometric mean
    assert method == "interpolated qp -36..-40"
    size, method = equal_mse_bytes(sweep, 4.000001e-6)
    assert size == 1000 and method.startswith("qp -36")
    assert equal_mse_bytes(sweep, 1e-5) == (None, "outside sweep")
    assert math.isclose(equal_mse_bytes(sweep, 1e-6)[0], 4000)


def test_gaussian_slb_is_half_log_of_variance_over_distortion():
    # s = 1, D = 1/4: 1/2·log2(4) = 1 bit.
    entropy = gaussian_entropy_bits(1.0)
    assert entropy == pytest.approx(0.5 * math.log2(2 * math.pi * math.e))
    assert shannon_lower_bound_bits(entropy, 0.25) == pytest.approx(1.0, abs=1e-12)
    assert shannon_lower_bound_bits(gaussian_entropy_bits(0.02), 4e-4 / 1024) == (
        pytest.approx(5.0, abs=1e-12)
    )
    assert entropy_power(entropy) == pytest.approx(1.0)
    # At or above the variance nothing needs to be sent.
    assert shannon_lower_bound_bits(entropy, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert shannon_lower_bound_bits(entropy, 3.0) == 0.0


def test_laplace_slb():
    # h = log2(2e) = 1 + log2(e); entropy power 2e/pi, below the variance 2.
    entropy = laplace_entropy_bits(1.0)
    assert entropy == pytest.approx(1 + 1 / math.log(2))
    assert entropy_power(entropy) == pytest.approx(2 * math.e / math.pi)
    assert shannon_lower_bound_bits(entropy, 2 * math.e / math.pi / 4) == (
        pytest.approx(1.0, abs=1e-12)
    )
    # The Gaussian of the same variance needs 1/2·log2(pi/e) bits more.
    gap = shannon_lower_bound_bits(
        gaussian_entropy_bits(math.sqrt(2)), 1e-3
    ) - shannon_lower_bound_bits(entropy, 1e-3)
    assert gap == pytest.approx(0.5 * math.log2(math.pi / math.e))
    np.testing.assert_allclose(
        laplace_entropy_bits(np.array([0.5, 2.0])), [math.log2(math.e), 2 + entropy - 1]
    )
    with pytest.raises(ValueError, match="smallest is 0.0"):
        laplace_entropy_bits(np.array([1.0, 0.0]))


def test_water_filling_of_equal_rows_is_the_single_source_bound():
    entropy = laplace_entropy_bits(0.01)
    single = shannon_lower_bound_bits(entropy, 1e-6)
    entropies, counts = np.array([entropy, entropy]), np.array([3, 5])
    total = water_filling_bound_bits(entropies, counts, 1e-6)
    assert total == pytest.approx(8 * single)
    assert water_filling_bound_bits(entropy, 7, 1e-6) == pytest.approx(7 * single)


def test_water_filling_gives_a_quiet_row_no_bits():
    # Entropy powers 1 and 0.01, one value each, mean distortion 0.255: the quiet
    # row takes D = 0.01 (all it has), the other theta = 0.5: 1/2·log2(2) bits.
    entropies = np.array([gaussian_entropy_bits(1.0), gaussian_entropy_bits(0.1)])
    counts = np.array([1, 1])
    assert water_level(entropy_power(entropies), counts, 0.255) == pytest.approx(0.5)
    assert water_filling_bound_bits(entropies, counts, 0.255) == pytest.approx(0.5)
    # Below the quiet row's power both rows get theta = D.
    assert water_filling_bound_bits(entropies, counts, 0.004) == pytest.approx(
        0.5 * math.log2(1 / 0.004) + 0.5 * math.log2(0.01 / 0.004)
    )
    # At the mean power everything is free.
    assert water_filling_bound_bits(entropies, counts, 0.505) == pytest.approx(0.0)
    assert water_level(np.array([1.0, 0.01]), counts, 0.9) == 1.0


def test_water_filling_is_the_least_total_over_distortion_splits():
    # Two rows of 10 and 30 values: search the split of the distortion budget.
    entropies = np.array([laplace_entropy_bits(1.0), laplace_entropy_bits(0.2)])
    counts = np.array([10, 30])
    mse = 0.03
    budget = mse * counts.sum()
    first = np.linspace(1e-6, budget / counts[0] - 1e-6, 200_001)
    second = (budget - counts[0] * first) / counts[1]
    totals = counts[0] * np.maximum(
        0, entropies[0] - 0.5 * np.log2(2 * math.pi * math.e * first)
    ) + counts[1] * np.maximum(
        0, entropies[1] - 0.5 * np.log2(2 * math.pi * math.e * second)
    )
    bound = water_filling_bound_bits(entropies, counts, mse)
    assert bound <= totals.min() + 1e-9
    assert bound == pytest.approx(totals.min(), rel=1e-6)


def test_water_level_matches_bisection_on_many_rows():
    rng = np.random.default_rng(5)
    powers = np.exp(rng.normal(0, 1.5, 300))
    counts = rng.integers(1, 50, 300)
    mse = 0.4
    low, high = 0.0, powers.max()
    for _ in range(200):
        middle = (low + high) / 2
        spent = counts @ np.minimum(middle, powers) / counts.sum()
        low, high = (middle, high) if spent < mse else (low, middle)
    assert water_level(powers, counts, mse) == pytest.approx(low, rel=1e-12)


def test_bound_row_and_verdict_lines():
    # 8000 values of N(0, 1) at D = 1/4: 1 bit each, 1000 bytes.
    density = SourceDensity(
        "N(0, 1)", np.array([gaussian_entropy_bits(1.0)]), np.array([8000])
    )
    reference = {"case": "g", "qp": -32, "coder": "nncodec", "bytes": 1000}
    row = rd_bound_row({**reference, "mse": 0.25}, density, 8000)
    assert row["bytes"] == pytest.approx(1000.0)
    assert row["bits_per_param"] == pytest.approx(1.0)
    assert row["bytes_vs_nncodec"] == pytest.approx(1.0)
    assert row["method"].startswith("N(0, 1): Shannon lower bound at NNCodec's MSE")

    (verdict,) = rd_bound_verdicts([{**reference, "mse": 0.25}, row])
    assert verdict["target_bytes"] == pytest.approx(950.0)
    assert not verdict["reachable"]
    assert format_rd_verdict(verdict) == (
        "R(D) g qp -32: target 0.95x NNCodec = 950 bytes < R(D) bound 1,000 bytes: "
        "unreachable by any coder."
    )

    # At D = 1/2 the bound is 1/2 bit per value: 500 bytes, below the target.
    row = rd_bound_row({**reference, "mse": 0.5}, density, 8000)
    (verdict,) = rd_bound_verdicts([{**reference, "mse": 0.5}, row])
    assert verdict["reachable"]
    assert format_rd_verdict(verdict).endswith(
        ">= R(D) bound 500 bytes: reachable in principle."
    )


def test_synthetic_densities_describe_the_arrays():
    cases = {case.name: case for case in synthetic_cases(quick=True)}
    assert cases["sparse80"].density is None

    # Entropy powers against the arrays: the Gaussian's is its variance, the
    # Laplacian's e/pi of it; row scales of weight_diff via mean |x| per row.
    gaussian = cases["gaussian"].params["weight"].astype(np.float64)
    assert entropy_power(cases["gaussian"].density.entropy_bits[0]) == pytest.approx(
        gaussian.var(), rel=5e-3
    )
    laplacian = cases["laplacian"].params["weight"].astype(np.float64)
    assert entropy_power(cases["laplacian"].density.entropy_bits[0]) == pytest.approx(
        laplacian.var() * math.e / math.pi, rel=5e-3
    )
    difference = cases["weight_diff"].params["weight"].astype(np.float64)
    density = cases["weight_diff"].density
    scales = np.exp2(density.entropy_bits) / (2 * math.e)
    assert np.abs(difference).mean(axis=1) / scales == pytest.approx(1.0, abs=0.2)
    assert (np.abs(difference).mean(axis=1) / scales).mean() == pytest.approx(
        1.0, abs=3e-3
    )
    for case in cases.values():
        if case.density is not None:
            assert case.density.counts.sum() == case.num_params


def test_paired_ratios_take_the_median_of_the_rounds():
    # Round 2 was slow for NNCodec only: its ratio is an outlier, not the median.
    result = paired_ratios([0.50, 0.90, 0.40], [0.05, 0.05, 0.05])
    assert result["ratios"] == pytest.approx([10.0, 18.0, 8.0])
    assert result["median"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="got 2 and 1"):
        paired_ratios([0.5, 0.4], [0.05])


class _FakeNNCodec:
    """Stands in for nncodec.nn: records the args, 'codes' one byte per value,
    and exits (as NNCodec does on input it cannot read) on int64 tensors."""

    def __init__(self):
        self.encode_args = None
        self.decoded = []

    def encode(self, params, args):
        self.encode_args = args
        if any(v.dtype == np.int64 for v in params.values()):
            raise SystemExit("Can not read parameter_dict")
        return bytearray(sum(v.size for v in params.values()))

    def decode(self, bitstream):
        self.decoded.append(len(bitstream))
        return {}


def test_speed_server_protocol(tmp_path):
    nn = _FakeNNCodec()
    server = SpeedServer(nn, str(tmp_path))
    assert server.handle({"op": "encode"}) == {"error": "encode before load"}

    np.savez(tmp_path / "x.npz", w=np.zeros((3, 5), np.float32))
    load = {"op": "load", "input": str(tmp_path / "x.npz"), "args": {"qp": -32}}
    assert server.handle(load) == {"ok": True}
    assert server.handle({"op": "decode"}) == {"error": "decode before encode"}
    assert nn.encode_args is None

    encoded = server.handle({"op": "encode"})
    assert encoded["bytes"] == 15 and encoded["encode_s"] >= 0
    assert nn.encode_args == {"qp": -32, "results": str(tmp_path), "verbose": False}
    assert set(server.handle({"op": "decode"})) == {"decode_s"}
    assert nn.decoded == [15]
    assert server.handle({"op": "stop"}) == {"error": "unknown op 'stop'"}

    # A load that fails leaves nothing loaded (the serve loop answers the
    # exception as an error).
    with pytest.raises(FileNotFoundError):
        server.handle({"op": "load", "input": str(tmp_path / "missing.npz")})
    assert server.handle({"op": "encode"}) == {"error": "encode before load"}


def test_speed_server_that_cannot_start_is_named(tmp_path):
    # This venv has no nncodec: the server dies on import, and the first
    # request says so with its exit status and the end of its log.
    server = NNCodecSpeedServer(sys.executable, tmp_path)
    try:
        with pytest.raises(
            BenchmarkError,
            match=r"request 'load': ended \(exit status 1\); its log ends: .*"
            "No module named",
        ):
            server.request(op="load", input="x.npz")
    finally:
        server.close()


def _fake_server(tmp_path, body: str) -> str:
    """An executable standing in for NNCodec's python (its arguments ignored)."""
    path = tmp_path / "fake_python.sh"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(
    "body, message",
    [
        ("cat > /dev/null", r"request 'encode': gave no reply within 1 s"),
        ("while read line; do echo hello; done", r"replied b'hello', not JSON"),
        ("while read line; do echo '[1]'; done", r"replied b'\[1\]', not an object"),
        ("echo oops >&2; exit 7", r"ended \(exit status 7\); its log ends: oops"),
    ],
    ids=["hangs", "not-json", "not-an-object", "exits"],
)
def test_speed_server_failures_are_benchmark_errors(tmp_path, body, message):
    server = NNCodecSpeedServer(
        _fake_server(tmp_path, body), tmp_path, reply_timeout_s=1.0
    )
    try:
        with pytest.raises(BenchmarkError, match=message):
            server.request(op="encode")
    finally:
        server.close()
    assert server._process.returncode is not None


def test_worker_jobs_outlive_an_input_on_which_nncodec_exits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the scratch folder goes in the working folder
    np.savez(tmp_path / "int.npz", w=np.arange(6, dtype=np.int64))
    np.savez(tmp_path / "good.npz", w=np.zeros(6, np.float32))
    stream = tmp_path / "ours.nnc"
    stream.write_bytes(b"\x00" * 9)
    job = {
        "encode": [
            {"id": "int", "input": str(tmp_path / "int.npz")},
            {"id": "good", "input": str(tmp_path / "good.npz"), "repeat": 2},
        ],
        "decode": [{"id": "ours", "bitstream": str(stream)}],
    }
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    results = run_jobs(_FakeNNCodec(), job, str(out_dir))

    assert results["encode"]["int"]["error"] == (
        "SystemExit: Can not read parameter_dict"
    )
    good = results["encode"]["good"]
    assert good["bytes"] == 6 and len(good["encode_s"]) == 2
    assert (out_dir / "good.nnc").read_bytes() == bytes(6)
    assert "decode_s" in results["decode"]["ours"]
    assert not list(tmp_path.glob("nncodec-results-*"))  # scratch removed


@pytest.mark.parametrize(
    "body, message",
    [
        ("exit 0", "exited 0 but left no readable results.json"),
        ("echo 'job x' >&2; exit 5", r"worker failed \(5\): job x"),
        ("sleep 5", "did not finish within 1 s"),
    ],
    ids=["no-results", "fails", "hangs"],
)
def test_job_worker_failures_are_benchmark_errors(tmp_path, body, message):
    python = _fake_server(tmp_path, body)
    job = {"encode": [], "decode": [], "out": str(tmp_path / "out")}
    with pytest.raises(BenchmarkError, match=message):
        run_nncodec_worker(python, job, tmp_path, timeout_s=1)


def test_a_memory_probe_that_prints_no_result_is_recorded(tmp_path):
    python = _fake_server(tmp_path, "echo 'not json'")
    probe = probe_memory(python, "nncodec", tmp_path / "x.npz", {})
    assert probe == {
        "coder": "nncodec",
        "error": "the probe printed 'not json', not a result",
    }
