"""Server side of the experiment: data preparation, one FL run per codec,
central evaluation every round, and the result files.

``run_experiment`` drives Flower's ``Strategy.start`` on whatever Grid it is
given (the SuperLink's in ``server_app``, an in-process one in ``local``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from tqdm import tqdm

from . import outputs
from .config import ExperimentConfig
from .data import TokenSequences, build_shards, read_shard, shard_paths
from .model import (
    build_model,
    count_unique_parameters,
    model_to_arrays,
    arrays_to_model,
)
from .training import evaluate, feature_errors, pick_device

logger = logging.getLogger(__name__)

FLOAT32_BYTES = 4


# -- data ---------------------------------------------------------------------


def prepare_shards(cfg: ExperimentConfig) -> Path:
    """Folder with train/clientID_k.bin and test/clientID_0.bin for this config.

    Synthetic and parquet shards are built once and cached under data_dir;
    published shards ("shards") are only checked.
    """
    if cfg.data_source == "shards":
        shard_paths(cfg.data_dir, cfg.num_clients)
        return cfg.data_dir

    if cfg.data_source == "synthetic":
        from .synthetic import GENERATOR_VERSION, SyntheticConfig, generate_table

        target = cfg.data_dir / (
            f"synthetic-v{GENERATOR_VERSION}-{cfg.preset.synthetic_rows}-seed{cfg.seed}"
        )
        make_table = lambda: generate_table(  # noqa: E731
            SyntheticConfig(num_rows=cfg.preset.synthetic_rows, seed=cfg.seed)
        )
    else:
        from .data import load_cellular_parquet

        assert cfg.parquet_path is not None
        target = cfg.data_dir / "parquet-shards"
        make_table = lambda: load_cellular_parquet(cfg.parquet_path)  # noqa: E731

    if (target / "summary.json").is_file():
        return target

    # Build in a private folder, then move it into place: concurrent builders
    # produce identical files, and the first rename wins.
    staging = target.with_name(f"{target.name}.tmp-{time.time_ns()}")
    summary = build_shards(make_table(), staging)
    (staging / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    try:
        staging.rename(target)
    except OSError:
        if not (target / "summary.json").is_file():
            raise
    logger.info("built shards in %s: %s", target, summary)
    return target


_SEQUENCE_CACHE: dict[tuple[str, int, int | None], TokenSequences] = {}


def load_sequences(
    path: Path, max_seq_len: int, limit: int | None = None
) -> TokenSequences:
    """Padded sequences of a shard, cached per process."""
    key = (str(path), max_seq_len, limit)
    if key not in _SEQUENCE_CACHE:
        _SEQUENCE_CACHE[key] = TokenSequences(read_shard(path), max_seq_len, limit)
    return _SEQUENCE_CACHE[key]


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


# -- one run ------------------------------------------------------------------


def quantizer_step(qp: int, qp_density: int = 2) -> float:
    """NNC uniform quantiser step for qp: (2^d + qp mod 2^d) * 2^(qp div 2^d - d)."""
    scale = 1 << qp_density
    return float(
        np.float32(
            (scale + (qp & (scale - 1))) * 2.0 ** ((qp >> qp_density) - qp_density)
        )
    )


def snap_to_grid(arrays: dict[str, np.ndarray], qp: int) -> dict[str, np.ndarray]:
    """Round every matrix to the quantiser grid of qp (vectors stay as they are).

    Both runs start from this model; NNCFedAvg's first broadcast, which codes
    the model as a difference to zero, then loses nothing.
    """
    step = np.float32(quantizer_step(qp))
    return {
        name: (
            np.rint(value / step).astype(np.float32) * step
            if value.ndim >= 2
            else value
        )
        for name, value in arrays.items()
    }


def save_update(
    folder: Path,
    server_round: int,
    global_model: dict[str, np.ndarray],
    previous: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Write the round's global update (new minus previous global model,
    float tensors as float32) as round_NN.npz, real federated updates for the
    codec benchmarks, unless there is no previous model. Returns the float
    tensors of ``global_model`` as float32: the next call's ``previous``."""
    current = {
        name: np.asarray(value, np.float32)
        for name, value in global_model.items()
        if np.issubdtype(np.asarray(value).dtype, np.floating)
    }
    if previous:
        folder.mkdir(parents=True, exist_ok=True)
        update = {name: value - previous[name] for name, value in current.items()}
        np.savez(folder / f"round_{server_round:02d}.npz", **update)
    return current


def make_strategy(cfg: ExperimentConfig, codec: str, out_dir: Path):
    """FedAvg (float32) or NNCFedAvg with the run's codec options."""
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=cfg.num_clients,
        min_available_nodes=cfg.num_clients,
    )
    if codec == "float32":
        return FedAvg(**common)
    from flwr_nncodec import NNCFedAvg

    return NNCFedAvg(**common, results_dir=str(out_dir), **cfg.codec.as_kwargs())


def run_one(
    grid: Grid, cfg: ExperimentConfig, codec: str, shard_dir: Path
) -> dict[str, Any]:
    """One federated run; writes its files into results_dir/<codec> and
    returns its summary."""
    out_dir = cfg.results_dir / codec
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    p = cfg.preset
    _, test_path = shard_paths(shard_dir, cfg.num_clients)
    test = load_sequences(test_path, p.max_seq_len, p.max_batches_test * p.batch_size)
    model = build_model(p.tlm_size, p.max_seq_len, p.dropout, seed=cfg.seed)
    initial = model_to_arrays(model)
    if cfg.snap_init:
        initial = snap_to_grid(initial, cfg.codec.qp)
    num_params = count_unique_parameters(model)
    strategy = make_strategy(cfg, codec, out_dir)

    rounds: list[dict[str, Any]] = []
    best = {"loss": math.inf, "round": -1}
    progress = tqdm(total=p.num_server_rounds, desc=f"{codec} rounds", unit="round")
    started = time.time()

    previous_global: dict[str, np.ndarray] = {}

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal previous_global
        global_model = record_to_arrays(arrays)
        if cfg.save_updates:
            previous_global = save_update(
                out_dir / "updates", server_round, global_model, previous_global
            )
        arrays_to_model(model, global_model)
        metrics = evaluate(model, test, p.batch_size, p.max_batches_test, device)
        metrics["round"] = server_round
        metrics["elapsed_s"] = time.time() - started
        rounds.append(metrics)
        if metrics["loss"] < best["loss"]:
            best.update(loss=metrics["loss"], round=server_round)
            outputs.save_checkpoint(model, out_dir / "best_model.pt")
        if server_round > 0:
            progress.update(1)
            progress.set_postfix(
                masked_acc=f"{metrics['masked_accuracy']:.2f}",
                loss=f"{metrics['loss']:.3f}",
            )
        logger.info(
            "%s round %d: %s",
            codec,
            server_round,
            {k: round(v, 4) for k, v in metrics.items()},
        )
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    train_config = ConfigRecord({"codec": codec})
    strategy.start(
        grid=grid,
        initial_arrays=arrays_to_record(initial),
        num_rounds=p.num_server_rounds,
        train_config=train_config,
        evaluate_fn=central_evaluate,
    )
    progress.close()
    runtime_s = time.time() - started

    traffic = round_traffic(
        codec, out_dir, num_params, cfg.num_clients, p.num_server_rounds
    )
    table = outputs.merge_rounds(rounds, traffic)

    # Per-feature errors of the best checkpoint (lowest validation loss).
    state = torch.load(out_dir / "best_model.pt", weights_only=True)
    model.load_state_dict(state, strict=False)
    errors = feature_errors(model, test, p.eval_generate_rows, p.max_seq_len, device)

    final = table[-1]
    summary = {
        "codec": codec,
        "preset": cfg.preset_name,
        "tlm_size": p.tlm_size,
        "unique_parameters": num_params,
        "rounds": p.num_server_rounds,
        "masked_accuracy": final["masked_accuracy"],
        "top1_accuracy": final["top1_accuracy"],
        "loss": final["loss"],
        "perplexity": final["perplexity"],
        "best_round": best["round"],
        "bytes_total": final["cumulative_bytes"],
        "bytes_float32_total": final["cumulative_bytes_float32"],
        "traffic_ratio": final["cumulative_bytes"]
        / max(1, final["cumulative_bytes_float32"]),
        "runtime_s": runtime_s,
        "device": str(device),
        "codec_options": cfg.codec.as_kwargs() if codec == "nnc" else None,
        "preset_settings": asdict(p),
    }
    outputs.write_run(out_dir, table, summary, errors)
    return {"summary": summary, "rounds": table, "feature_errors": errors}


def round_traffic(
    codec: str, out_dir: Path, num_params: int, num_clients: int, num_rounds: int
) -> dict[int, dict[str, int]]:
    """Bytes per round: the plugin's history.json for NNC, array sizes for float32."""
    float32_model = num_params * FLOAT32_BYTES
    if codec == "float32":
        return {
            r: {
                "bytes_down": num_clients * float32_model,
                "bytes_up": num_clients * float32_model,
                "bytes_config": 0,
                "bytes_float32": 2 * num_clients * float32_model,
            }
            for r in range(1, num_rounds + 1)
        }
    history_path = out_dir / "history.json"
    if not history_path.is_file():
        raise FileNotFoundError(f"NNCFedAvg wrote no {history_path}")
    history = json.loads(history_path.read_text())
    # Coded bytes = bitstream payloads plus the nnc.* ConfigRecord entries
    # (manifest, versions, segment lengths) that travel with them.
    return {
        int(entry["round"]): {
            "bytes_down": int(entry["bytes_down"])
            + int(entry.get("config_bytes_down", 0)),
            "bytes_up": int(entry["bytes_up"]) + int(entry.get("config_bytes_up", 0)),
            "bytes_config": int(entry.get("config_bytes_down", 0))
            + int(entry.get("config_bytes_up", 0)),
            "bytes_float32": int(entry["bytes_float32"]),
        }
        for entry in history["rounds"]
    }


def run_experiment(grid: Grid, cfg: ExperimentConfig) -> dict[str, Any]:
    """The configured mode: one NNC run, one float32 run, or both and a comparison."""
    cfg.results_dir.mkdir(parents=True, exist_ok=True)
    shard_dir = prepare_shards(cfg)
    codecs = {"nnc": ["nnc"], "float32": ["float32"], "compare": ["float32", "nnc"]}[
        cfg.mode
    ]
    runs = {codec: run_one(grid, cfg, codec, shard_dir) for codec in codecs}
    summary = outputs.write_experiment(cfg, runs, shard_dir)
    return summary
