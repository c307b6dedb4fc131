"""Run the reference NNCodec for benchmarks/run.py, inside NNCodec's own venv.

    /opt/nncref/bin/python benchmarks/nncodec_worker.py JOB.json

The job file names parameter files (.npz) to encode with ``nncodec.nn.encode``
and bitstreams (ours) to decode with ``nncodec.nn.decode``. Results go to the
job's output folder: ``<id>.nnc`` bitstreams, ``<id>.rec.npz`` reconstructions
and ``results.json`` (sizes, seconds, errors). Only numpy files and JSON cross
the process boundary; nothing is pickled.

    /opt/nncref/bin/python benchmarks/nncodec_worker.py --serve

serves timed calls one at a time for paired speed rounds: each line on stdin
is one JSON request, each answered by one JSON line on stdout:

    {"op": "load", "input": "x.npz", "args": {"qp": -32}}  -> {"ok": true}
    {"op": "encode"}  -> {"encode_s": 0.46, "bytes": 444029}
    {"op": "decode"}  -> {"decode_s": 0.06}  (the last encode's stream)

A failed request is answered {"error": "..."}; end of input ends the worker.

This file must run with NNCodec's numpy 1.26 and must not import flwr_nncodec.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
import types


def import_nncodec():
    """Import nncodec.nn; return (module, whether torchvision's ops were skipped).

    nncodec imports torchvision at module level for its dataset helpers, which
    the dict API (nn.encode / nn.decode) never calls. Next to a CPU torch, pip
    resolves a CUDA torchvision whose compiled ops do not load, and importing it
    raises RuntimeError while registering fake kernels for them. On exactly that
    failure, torchvision is imported again with the registration module replaced
    by an empty one (the same approach as tools/make_vectors.py).
    """
    try:
        import torchvision  # noqa: F401

        ops_skipped = False
    except RuntimeError:
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        registrations = "torchvision._meta_registrations"
        sys.modules[registrations] = types.ModuleType(registrations)
        import torchvision  # noqa: F401

        ops_skipped = True
    from nncodec import nn

    return nn, ops_skipped


def _quiet_call(function, *args, **kwargs):
    """Call ``function`` with NNCodec's prints sent to a buffer."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def _load_npz(path):
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def run_encode_job(nn, job, out_dir, scratch_dir):
    """Encode one parameter file ``repeat`` times; decode the stream as often."""
    import numpy as np

    params = _load_npz(job["input"])
    args = {**job.get("args", {}), "results": scratch_dir, "verbose": False}
    repeat = int(job.get("repeat", 1))

    encode_seconds, decode_seconds = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        bitstream = _quiet_call(nn.encode, params, args=args)
        encode_seconds.append(time.perf_counter() - started)
    for _ in range(repeat):
        started = time.perf_counter()
        # NNCodec takes a bytearray (or a path); bytes would be read as a path.
        reconstruction = _quiet_call(nn.decode, bytearray(bitstream))
        decode_seconds.append(time.perf_counter() - started)

    bitstream_path = os.path.join(out_dir, f"{job['id']}.nnc")
    with open(bitstream_path, "wb") as handle:
        handle.write(bytes(bitstream))
    reconstruction_path = os.path.join(out_dir, f"{job['id']}.rec.npz")
    np.savez(
        reconstruction_path, **{k: np.asarray(v) for k, v in reconstruction.items()}
    )
    return {
        "bytes": len(bitstream),
        "encode_s": encode_seconds,
        "decode_s": decode_seconds,
        "bitstream": bitstream_path,
        "reconstruction": reconstruction_path,
    }


def run_decode_job(nn, job, out_dir):
    """Decode one of our bitstreams and save what NNCodec reconstructs."""
    import numpy as np

    with open(job["bitstream"], "rb") as handle:
        bitstream = handle.read()
    started = time.perf_counter()
    reconstruction = _quiet_call(nn.decode, bytearray(bitstream))
    decode_seconds = time.perf_counter() - started
    reconstruction_path = os.path.join(out_dir, f"{job['id']}.rec.npz")
    np.savez(
        reconstruction_path, **{k: np.asarray(v) for k, v in reconstruction.items()}
    )
    return {"decode_s": decode_seconds, "reconstruction": reconstruction_path}


def main(job_path: str) -> int:
    with open(job_path) as handle:
        job = json.load(handle)
    out_dir = job["out"]
    os.makedirs(out_dir, exist_ok=True)

    started = time.perf_counter()
    nn, ops_skipped = import_nncodec()
    from importlib.metadata import version

    results = {
        "nncodec_version": version("nncodec"),
        "torchvision_ops_skipped": ops_skipped,
        "import_s": time.perf_counter() - started,
        **run_jobs(nn, job, out_dir),
    }
    with open(os.path.join(out_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    return 0


def _scratch_folder():
    """A temporary folder for the .nnc file NNCodec writes into
    args["results"] on every encode call. It sits in the working folder
    (run.py's work folder), so it goes with that folder even when this
    process is killed."""
    return tempfile.TemporaryDirectory(prefix="nncodec-results-", dir=os.getcwd())


def _say(line):
    """A progress line on stderr: the end of a failed worker's stderr, which
    run.py quotes, then names the job it was running."""
    print(f"nncodec_worker: {line}", file=sys.stderr, flush=True)


def run_jobs(nn, job, out_dir):
    """{"encode": {id: result}, "decode": {id: result}}; a job that fails,
    also by NNCodec asserting or calling exit(), gets {"error": ...} and the
    others still run."""
    results = {"encode": {}, "decode": {}}
    with _scratch_folder() as scratch_dir:
        for encode_job in job.get("encode", []):
            _say(f"encode job {encode_job.get('id')!r}")
            try:
                results["encode"][encode_job["id"]] = run_encode_job(
                    nn, encode_job, out_dir, scratch_dir
                )
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt):
                    raise
                results["encode"][encode_job["id"]] = {
                    "error": f"{type(error).__name__}: {error}"[:500],
                    "traceback": traceback.format_exc()[-2000:],
                }
    for decode_job in job.get("decode", []):
        _say(f"decode job {decode_job.get('id')!r}")
        try:
            results["decode"][decode_job["id"]] = run_decode_job(
                nn, decode_job, out_dir
            )
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                raise
            results["decode"][decode_job["id"]] = {
                "error": f"{type(error).__name__}: {error}"[:500]
            }
    return results


class SpeedServer:
    """The state of --serve: the loaded input and the last encoded stream."""

    def __init__(self, nn, scratch_dir):
        self.nn = nn
        self.scratch_dir = scratch_dir
        self.params = None
        self.args = None
        self.bitstream = None

    def handle(self, request):
        op = request.get("op")
        if op == "load":
            # A failed load leaves nothing loaded: no encode of the old input.
            self.params = self.args = self.bitstream = None
            self.params = _load_npz(request["input"])
            self.args = {
                **request.get("args", {}),
                "results": self.scratch_dir,
                "verbose": False,
            }
            self.bitstream = None
            return {"ok": True}
        if op == "encode":
            if self.params is None:
                return {"error": "encode before load"}
            started = time.perf_counter()
            self.bitstream = _quiet_call(self.nn.encode, self.params, args=self.args)
            return {
                "encode_s": time.perf_counter() - started,
                "bytes": len(self.bitstream),
            }
        if op == "decode":
            if self.bitstream is None:
                return {"error": "decode before encode"}
            started = time.perf_counter()
            _quiet_call(self.nn.decode, bytearray(self.bitstream))
            return {"decode_s": time.perf_counter() - started}
        return {"error": f"unknown op {op!r}"}


def serve() -> int:
    """--serve: answer timed requests from stdin until it ends."""
    # Replies go to the original stdout; anything NNCodec or torch prints
    # goes to stderr, so it cannot corrupt a reply line.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    nn, _ = import_nncodec()
    with _scratch_folder() as scratch_dir:
        server = SpeedServer(nn, scratch_dir)
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                reply = server.handle(json.loads(line))
            except BaseException as error:  # NNCodec may assert or exit
                if isinstance(error, KeyboardInterrupt):
                    raise
                reply = {"error": f"{type(error).__name__}: {error}"[:500]}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        sys.exit(serve())
    sys.exit(main(sys.argv[1]))
