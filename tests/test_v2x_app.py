"""Berlin V2X app end to end: `flwr run` of the smoke preset in a loopback namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_berlin_v2x.sh"
NANO_PARAMETERS = 113_184
NUM_CLIENTS, SMOKE_ROUNDS = 5, 2


@pytest.mark.slow
def test_smoke_run_compares_fedavg_and_nncfedavg(tmp_path):
    """Both runs finish, bytes are counted, result files are complete."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a loopback-only network namespace")

    result = subprocess.run(
        [str(SCRIPT), "--preset", "smoke", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "traffic of NNCFedAvg / float32 FedAvg" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    plain, coded = summary["runs"]["float32"], summary["runs"]["nnc"]
    # float32 FedAvg sends the unique parameters (tied matrix once) both ways.
    float32_bytes = SMOKE_ROUNDS * 2 * NUM_CLIENTS * NANO_PARAMETERS * 4
    assert plain["bytes_total"] == float32_bytes == coded["bytes_float32_total"]
    assert 0 < coded["bytes_total"] < 0.05 * float32_bytes
    assert summary["traffic_ratio"] == pytest.approx(
        coded["bytes_total"] / float32_bytes
    )
    assert plain["masked_accuracy"] > 10.0  # learned the field structure
    for key in ("masked_accuracy", "top1_accuracy", "traffic_ratio"):
        assert key in summary

    for codec in ("float32", "nnc"):
        run_dir = tmp_path / codec
        rows = (run_dir / "rounds.csv").read_text().splitlines()
        assert len(rows) == 1 + SMOKE_ROUNDS + 1  # header, round 0, rounds 1..2
        assert rows[0].startswith("round,loss,perplexity,top1_accuracy,masked_accuracy")
        errors = json.loads((run_dir / "feature_errors.json").read_text())
        assert len(errors) == 14 and "ping_ms" in errors
        state = torch.load(run_dir / "best_model.pt", weights_only=True)
        assert state["tok_embeddings.weight"].shape == (237, 48)
    for png in ("accuracy_vs_round.png", "accuracy_vs_traffic.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((tmp_path / "nnc" / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert '"finished:completed"' in (tmp_path / "flwr_ls.json").read_text()


@pytest.mark.parametrize("arguments, message", [
    (["--preset", "bogus"],
     "run config 'preset' must be one of ['cpu', 'paper', 'smoke'], got 'bogus'"),
    (["--mode", "both"], "run config 'mode' must be one of"),
    (["lr=5.0"], "run config 'lr' must lie in (0, 1), got 5.0"),
    (["qp="], "Invalid value"),
])
def test_a_bad_run_config_is_refused_before_flower_starts(tmp_path, arguments, message):
    """The script checks the run config with the app's own resolve() first:
    exit 2 and the app's message, no Flower process, no results."""
    results = tmp_path / "results"
    result = subprocess.run(
        [str(SCRIPT), *arguments, "--results-dir", str(results)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "flwr" not in result.stdout.lower()
    assert list(results.iterdir()) == []
