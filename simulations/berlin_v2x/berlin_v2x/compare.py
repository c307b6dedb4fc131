"""Combine a float32 run and an NNC run made separately (same seeds) into the
comparison files that ``mode = "compare"`` writes.

Usage: python -m berlin_v2x.compare FLOAT32_RUN_DIR NNC_RUN_DIR OUT_DIR
(each run dir holds summary.json, rounds.json and feature_errors.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from .outputs import write_experiment


def load_run(run_dir: Path) -> dict:
    """summary, rounds and feature errors of one run directory."""
    return {
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "rounds": json.loads((run_dir / "rounds.json").read_text()),
        "feature_errors": json.loads((run_dir / "feature_errors.json").read_text()),
    }


def compare(float32_dir: Path, nnc_dir: Path, out_dir: Path) -> dict:
    """Write summary.json, plots and the feature table of both runs to out_dir."""
    runs = {"float32": load_run(float32_dir), "nnc": load_run(nnc_dir)}
    for codec, run in runs.items():
        if run["summary"]["codec"] != codec:
            raise ValueError(f"{codec} run dir holds a {run['summary']['codec']!r} run")
        for row in run["rounds"]:  # JSON null back to NaN-free floats
            row.update({k: float("nan") for k, v in row.items() if v is None})
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = SimpleNamespace(
        mode="compare",
        preset_name=runs["nnc"]["summary"]["preset"],
        data_source="synthetic",
        results_dir=out_dir,
    )
    return write_experiment(cfg, runs, nnc_dir.parent / "data")


if __name__ == "__main__":
    summary = compare(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
