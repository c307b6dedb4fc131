"""Result files of a run: per-round JSON/CSV, summary, feature-error table,
best checkpoint and plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch

ROUND_COLUMNS = (
    "round",
    "loss",
    "perplexity",
    "top1_accuracy",
    "masked_accuracy",
    "masked_loss",
    "bytes_up",
    "bytes_down",
    "bytes_config",
    "bytes_float32",
    "cumulative_bytes",
    "cumulative_mb",
    "cumulative_bytes_float32",
    "cumulative_mb_float32",
    "ratio",
    "elapsed_s",
)
COLOURS = {"float32": "#4C72B0", "nnc": "#DD8452"}
LABELS = {"float32": "FedAvg (float32)", "nnc": "NNCFedAvg"}


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """State dict of plain tensors, loadable with torch.load(weights_only=True)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def merge_rounds(
    rounds: list[dict[str, Any]], traffic: dict[int, dict[str, int]]
) -> list[dict[str, Any]]:
    """Evaluation metrics joined with bytes per round and running totals."""
    table = []
    total = total_float32 = 0
    for metrics in sorted(rounds, key=lambda m: m["round"]):
        r = metrics["round"]
        t = traffic.get(
            r, {"bytes_up": 0, "bytes_down": 0, "bytes_config": 0, "bytes_float32": 0}
        )
        total += t["bytes_up"] + t["bytes_down"]
        total_float32 += t["bytes_float32"]
        row = dict(metrics)
        row.update(t)
        row.update(
            cumulative_bytes=total,
            cumulative_mb=total / 1e6,
            cumulative_bytes_float32=total_float32,
            cumulative_mb_float32=total_float32 / 1e6,
            ratio=total / total_float32 if total_float32 else 0.0,
        )
        table.append(row)
    return table


def _write_csv(path: Path, rows: list[dict[str, Any]], columns) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(_json_safe(document), indent=1) + "\n")


def _percent(value: float | None) -> str:
    """Two decimals, or "n/a" when no row produced a value (None/NaN)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}"


def write_feature_table(
    path_stem: Path,
    errors: dict[str, dict[str, float]],
    baseline: dict[str, dict[str, float]] | None = None,
) -> None:
    """feature_errors.json and a Markdown table of mean |relative error| (%)."""
    _write_json(path_stem.with_suffix(".json"), errors)
    lines = [
        "| feature | rows | mean abs. rel. error (%) |"
        + (" float32 FedAvg (%) |" if baseline else ""),
        "| --- | ---: | ---: |" + (" ---: |" if baseline else ""),
    ]
    for key, entry in errors.items():
        line = (
            f"| {key} | {entry['rows']} | {_percent(entry['mean_abs_rel_error_pct'])} |"
        )
        if baseline:
            line += f" {_percent(baseline[key]['mean_abs_rel_error_pct'])} |"
        lines.append(line)
    path_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def write_run(out_dir: Path, table, summary, errors) -> None:
    """rounds.json/.csv, summary.json, feature_errors.json/.md and plots of one run."""
    _write_json(out_dir / "rounds.json", table)
    _write_csv(out_dir / "rounds.csv", table, ROUND_COLUMNS)
    _write_json(out_dir / "summary.json", summary)
    write_feature_table(out_dir / "feature_errors", errors)
    plot_runs(out_dir, {summary["codec"]: table})


def write_experiment(
    cfg, runs: dict[str, dict[str, Any]], shard_dir: Path
) -> dict[str, Any]:
    """Top-level summary.json (and comparison plots when both codecs ran)."""
    out = cfg.results_dir
    main = runs.get("nnc") or runs["float32"]
    s = main["summary"]
    summary: dict[str, Any] = {
        "mode": cfg.mode,
        "preset": cfg.preset_name,
        "data": cfg.data_source,
        "shards": str(shard_dir),
        "masked_accuracy": s["masked_accuracy"],
        "top1_accuracy": s["top1_accuracy"],
        "traffic_ratio": s["traffic_ratio"],
        "runtime_s": sum(r["summary"]["runtime_s"] for r in runs.values()),
        "runs": {codec: r["summary"] for codec, r in runs.items()},
    }
    if "nnc" in runs and "float32" in runs:
        coded, plain = runs["nnc"]["summary"], runs["float32"]["summary"]
        summary["traffic_ratio"] = coded["bytes_total"] / max(1, plain["bytes_total"])
        summary["masked_accuracy_float32"] = plain["masked_accuracy"]
        summary["top1_accuracy_float32"] = plain["top1_accuracy"]
        summary["masked_accuracy_gap_pp"] = (
            plain["masked_accuracy"] - coded["masked_accuracy"]
        )
        summary["top1_accuracy_gap_pp"] = (
            plain["top1_accuracy"] - coded["top1_accuracy"]
        )
        summary["acceptance"] = {
            "traffic_ratio_at_most_1pct": summary["traffic_ratio"] <= 0.01,
            "masked_accuracy_within_1pp": abs(summary["masked_accuracy_gap_pp"]) <= 1.0,
        }
        write_feature_table(
            out / "feature_errors",
            runs["nnc"]["feature_errors"],
            runs["float32"]["feature_errors"],
        )
    plot_runs(out, {codec: r["rounds"] for codec, r in runs.items()})
    _write_json(out / "summary.json", summary)
    return summary


def plot_runs(out_dir: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
    """accuracy_vs_round.png and accuracy_vs_traffic.png for one or two runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    plt.rcParams.update(
        {"font.size": 10, "axes.spines.top": False, "axes.spines.right": False}
    )

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for codec, table in tables.items():
        rounds = [row["round"] for row in table]
        style = dict(color=COLOURS[codec], marker="o", markersize=3.5, linewidth=1.8)
        axes[0].plot(
            rounds,
            [row["masked_accuracy"] for row in table],
            label=LABELS[codec],
            **style,
        )
        axes[1].plot(
            rounds,
            [row["top1_accuracy"] for row in table],
            label=LABELS[codec],
            **style,
        )
        axes[2].plot(
            rounds, [row["loss"] for row in table], label=LABELS[codec], **style
        )
    axes[0].set_title("Masked top-1 accuracy (padding excluded)")
    axes[1].set_title("Top-1 accuracy as in the paper (padding included)")
    axes[2].set_title("Test loss (cross-entropy, nats)")
    for ax, ylabel in zip(axes, ("accuracy (%)", "accuracy (%)", "loss")):
        ax.set_xlabel("FL round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.suptitle("Berlin V2X tiny LM: federated training, 5 regional clients")
    fig.savefig(out_dir / "accuracy_vs_round.png", dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for codec, table in tables.items():
        sent = [
            row for row in table if row["cumulative_mb"] > 0
        ]  # round 0 sent nothing
        ax.plot(
            [row["cumulative_mb"] for row in sent],
            [row["masked_accuracy"] for row in sent],
            color=COLOURS[codec],
            marker="o",
            markersize=3.5,
            linewidth=1.8,
            label=f"{LABELS[codec]}: {table[-1]['cumulative_mb']:.2f} MB total",
        )
    if "float32" in tables:
        one_percent_mb = 0.01 * tables["float32"][-1]["cumulative_mb"]
        ax.axvline(one_percent_mb, color="grey", linestyle=":", linewidth=1.2)
        ax.annotate(
            "1 % of float32 total",
            (one_percent_mb, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            ha="right",
            va="bottom",
            fontsize=8,
            color="grey",
        )
    ax.set_xscale("log")
    ax.set_xlabel("cumulative traffic, up + down (MB, log scale)")
    ax.set_ylabel("masked top-1 accuracy (%)")
    ax.set_title("Accuracy against communicated bytes")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False, loc="lower right")
    fig.savefig(out_dir / "accuracy_vs_traffic.png", dpi=130)
    plt.close(fig)
