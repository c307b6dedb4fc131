"""End to end: simulations/quickstart under `flwr run`, simulated and deployed.

Each test runs scripts/flower_e2e.sh in a private network namespace (loopback
only), which starts its own SuperLink (and SuperNodes), runs the app, records
`flwr ls --format json`, and stops every server it started by PID. FLWR_HOME and
the results folder live in pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "flower_e2e.sh"
NUM_PARAMETERS = 64 * 64 + 64 + 64 * 10 + 10  # the quickstart MLP
TIMEOUT_S = 240


def _namespace_command() -> list[str] | None:
    # Plain unshare needs CAP_SYS_ADMIN; -r maps us to root in a user namespace.
    for command in (["unshare", "-n"], ["unshare", "-rn"]):
        try:
            subprocess.run(
                command + ["true"], check=True, capture_output=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return command
    return None


def _run_quickstart(
    mode: str, work: Path, rounds: int, nodes: int
) -> tuple[dict, dict]:
    namespace = _namespace_command()
    if namespace is None:
        pytest.skip("needs a private network namespace (unshare -n or -rn)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to bring up loopback in the namespace")

    process = subprocess.Popen(
        namespace + ["bash", str(SCRIPT), mode, str(work), str(rounds), str(nodes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # our own session: the script's trap
        output, _ = process.communicate(timeout=30)  # stops its servers by PID

    logs = work / "logs"
    run_log = (
        (logs / "flwr-run.log").read_text(errors="replace") if logs.exists() else ""
    )
    listing = json.loads((work / "ls.json").read_text())
    assert len(listing["runs"]) == 1, output
    run = listing["runs"][0]
    assert run["status"] == "finished:completed", f"{output}\n{run_log[-3000:]}"
    history = json.loads((work / "results" / "history.json").read_text())
    return run, history


def _check_history(history: dict, rounds: int, nodes: int) -> None:
    assert history["num_parameters"] == NUM_PARAMETERS
    assert [entry["round"] for entry in history["rounds"]] == list(range(1, rounds + 1))
    for entry in history["rounds"]:
        assert entry["models_up"] == nodes
        assert entry["messages_down"] == 2 * nodes
        assert entry["bytes_float32"] == 3 * nodes * NUM_PARAMETERS * 4
        assert entry["decode_failures"] == 0
    # Measured: 14-20x over 3 rounds at the fl.py defaults (diff_qp -26,
    # sparsity 0.6, structured 0.9, TCA); 8x leaves room for other seeds.
    assert history["totals"]["ratio"] > 8.0


def test_simulation_three_supernodes(tmp_path):
    """`flwr run` with 3 simulated SuperNodes completes with compressed traffic."""
    run, history = _run_quickstart("simulation", tmp_path, rounds=3, nodes=3)
    _check_history(history, rounds=3, nodes=3)


def test_deployment_superlink_two_supernodes(tmp_path):
    """SuperLink + 2 SuperNodes on loopback; its counters see the coded bytes."""
    run, history = _run_quickstart("deployment", tmp_path, rounds=2, nodes=2)
    _check_history(history, rounds=2, nodes=2)

    traffic = run["network-traffic"]
    totals = history["totals"]
    messages_down = sum(entry["messages_down"] for entry in history["rounds"])
    replies_up = messages_down  # every train and evaluate message is answered
    overhead_down = traffic["outbound-bytes"] - totals["bytes_down"]
    overhead_up = traffic["inbound-bytes"] - totals["bytes_up"]
    print(
        f"SuperLink outbound {traffic['outbound-bytes']} B vs payload "
        f"{totals['bytes_down']} B; inbound {traffic['inbound-bytes']} B vs "
        f"payload {totals['bytes_up']} B"
    )
    # The counters include message headers, configs and metrics: a few KiB per
    # message, never less than the payload, and far below float32 weights.
    assert 0 <= overhead_down <= 6144 * messages_down
    assert 0 <= overhead_up <= 6144 * replies_up
    assert traffic["total-bytes"] < totals["bytes_float32"] / 4
