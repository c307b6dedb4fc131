"""Write NNCodec block-scan vectors (scan_order 1..4) into tests/vectors_block_scan.

NNCodec 2.1.3's ``nn``/``fl`` APIs always code in raster order; its
``nnc.compress(..., scan_order=k)`` writes block scans with
cabac_entry_point_list. These vectors pin what our decoder must read and what
our entry points must equal (nnc-format §3.5, §3.7, quirk Q3). Run in the
side venv (scripts/setup_nncodec_venv.sh):

    .venv-nncodec/bin/python tools/make_block_scan_vectors.py

Deterministic: fixed seeds, and NNCodec's encoder has no randomness.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from make_vectors import Reference  # noqa: E402

log = logging.getLogger("make_block_scan_vectors")

# name: (seed, shapes, scan_order, use_dq, row_skipping, zero rows per tensor)
CASES = {
    "bs1_dq": (1, [(20, 20)], 1, True, False, 0),
    "bs1_urq": (2, [(20, 20)], 1, False, False, 0),
    "bs2_dq_rowskip_w30": (3, [(70, 30)], 2, True, True, 3),
    "bs2_urq_rowskip": (4, [(70, 30)], 2, False, True, 3),
    "bs1_dq_4d": (5, [(9, 4, 5)], 1, True, False, 0),
    "bs3_dq_rowskip_w37": (6, [(100, 37), (17,)], 3, True, True, 5),
    "bs4_dq_rowskip": (7, [(200, 72)], 4, True, True, 8),
    "bs4_dq_one_block_row": (8, [(64, 130)], 4, True, False, 0),
    "bs2_dq_rowskip_w2": (9, [(45, 2)], 2, True, True, 4),
}
QP = -32


def inputs(seed, shapes, zero_rows):
    rng = np.random.default_rng(seed)
    params = {}
    for index, shape in enumerate(shapes):
        value = rng.normal(0.0, 0.05, shape).astype(np.float32)
        if len(shape) > 1 and zero_rows:
            value[rng.choice(shape[0], zero_rows, replace=False)] = 0.0
        params[f"t{index}"] = value
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent.parent
                                             / "tests" / "vectors_block_scan"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    ref = Reference()
    manifest = {"generator": "tools/make_block_scan_vectors.py", "qp": QP,
                "vectors": {}}
    for name, (seed, shapes, scan_order, use_dq, row_skipping, zero_rows) in \
            CASES.items():
        params = inputs(seed, shapes, zero_rows)
        kwargs = {"qp": QP, "use_dq": use_dq, "row_skipping": row_skipping,
                  "param_opt": True, "scan_order": scan_order}
        with contextlib.redirect_stdout(io.StringIO()):
            bitstream = bytes(ref.compression.compress(
                params, bitstream_path=None, return_bitstream=True, **kwargs))
        decoded, snapshot = ref.decode(bitstream, None)
        arrays = {f"in:{k}": v for k, v in params.items()}
        arrays.update({f"out:{k}": np.asarray(v) for k, v in decoded.items()})
        arrays.update({f"q:{k}": np.asarray(v, dtype=np.int32)
                       for k, v in snapshot["parameters"].items()})
        (out_dir / f"{name}.nnc").write_bytes(bitstream)
        np.savez_compressed(out_dir / f"{name}.npz", **arrays)
        manifest["vectors"][name] = {
            "nncodec_kwargs": kwargs,
            "inputs": {k: list(v.shape) for k, v in params.items()},
            "bitstream": f"{name}.nnc",
            "arrays": f"{name}.npz",
            "sha256": hashlib.sha256(bitstream).hexdigest(),
        }
        log.info("%s: %d bytes", name, len(bitstream))
    with open(out_dir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
