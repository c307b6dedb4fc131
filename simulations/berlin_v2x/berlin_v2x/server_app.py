"""ServerApp: prepares the shards, runs FedAvg and/or NNCFedAvg, writes results."""

from __future__ import annotations

import logging
from logging import INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .config import resolve
from .experiment import run_experiment

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured mode and log the headline figures."""
    logging.getLogger("berlin_v2x").setLevel(logging.INFO)
    cfg = resolve(context.run_config)
    log(
        INFO,
        "Berlin V2X: mode %s, preset %s, results in %s",
        cfg.mode,
        cfg.preset_name,
        cfg.results_dir,
    )
    summary = run_experiment(grid, cfg)
    log(
        INFO,
        "Berlin V2X done: masked accuracy %.2f %%, top-1 %.2f %%, traffic ratio %.4f %% of float32",
        summary["masked_accuracy"],
        summary["top1_accuracy"],
        100.0 * summary["traffic_ratio"],
    )
