"""Measure the extra memory one encode call needs, in a fresh process.

    python benchmarks/mem_probe.py ours INPUT.npz '{"qp": -32}'
    /opt/nncref/bin/python benchmarks/mem_probe.py nncodec INPUT.npz '{"qp": -32}'

Prints one JSON line: input bytes, the peak resident set size (RSS) above the
RSS before the call, and the peak of Python-visible allocations (tracemalloc,
which sees numpy buffers but not C++ heap memory). The peak RSS is reset just
before the call through /proc/self/clear_refs (Linux), so loading the input
does not count.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import tracemalloc


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _load_npz(path):
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def main(coder: str, input_path: str, options_json: str) -> int:
    import numpy as np

    options = json.loads(options_json)
    params = _load_npz(input_path)
    warmup = {"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)}

    if coder == "ours":
        import flwr_nncodec

        def encode(values):
            return flwr_nncodec.encode(values, **options)

    elif coder == "nncodec":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from nncodec_worker import _quiet_call, import_nncodec

        nn, _ = import_nncodec()
        scratch = tempfile.mkdtemp(prefix="nncodec-mem-")
        args = {**options, "results": scratch, "verbose": False}

        def encode(values):
            return _quiet_call(nn.encode, values, args=args)

    else:
        raise SystemExit(f"unknown coder {coder!r}; expected 'ours' or 'nncodec'")

    encode(warmup)
    gc.collect()
    rss_before_kib = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    tracemalloc.start()
    bitstream = encode(params)
    _, traced_peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak_kib = _status_kib("VmHWM")

    input_bytes = int(sum(array.nbytes for array in params.values()))
    extra_rss_bytes = max(0, rss_peak_kib - rss_before_kib) * 1024
    print(
        json.dumps(
            {
                "coder": coder,
                "input_bytes": input_bytes,
                "bitstream_bytes": len(bitstream),
                "extra_rss_bytes": extra_rss_bytes,
                "traced_peak_bytes": int(traced_peak_bytes),
                "extra_rss_per_input": extra_rss_bytes / input_bytes,
                "traced_peak_per_input": traced_peak_bytes / input_bytes,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
