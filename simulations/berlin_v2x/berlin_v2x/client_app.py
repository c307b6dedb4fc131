"""ClientApp: one Berlin V2X area per node, local TLM training per round.

``flwr_nncodec.nnc_mod`` decodes NNCFedAvg's payloads before ``train`` runs and
codes the trained weights afterwards; plain FedAvg messages pass through it.
"""

from __future__ import annotations

import math

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr_nncodec import nnc_mod

from .config import resolve
from .data import shard_paths
from .experiment import (
    arrays_to_record,
    load_sequences,
    prepare_shards,
    record_to_arrays,
)
from .model import arrays_to_model, build_model, model_to_arrays
from .training import TrainSettings, pick_device, train_round

app = ClientApp(mods=[nnc_mod])


def partition_of(context: Context, num_clients: int) -> int:
    """The node's area index from node_config, checked against the five areas."""
    if "partition-id" not in context.node_config:
        raise KeyError(
            "node_config lacks 'partition-id' (0..4 selects the Berlin V2X area)"
        )
    partition = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config.get("num-partitions", num_clients))
    if num_partitions != num_clients or not 0 <= partition < num_clients:
        raise ValueError(
            f"Berlin V2X needs {num_clients} nodes (one per area); got partition-id "
            f"{partition} of num-partitions {num_partitions}"
        )
    return partition


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this area's first local-steps batches."""
    cfg = resolve(context.run_config)
    p = cfg.preset
    partition = partition_of(context, cfg.num_clients)
    train_paths, _ = shard_paths(prepare_shards(cfg), cfg.num_clients)
    data = load_sequences(train_paths[partition], p.max_seq_len)

    model = build_model(p.tlm_size, p.max_seq_len, p.dropout, seed=cfg.seed)
    arrays_to_model(model, record_to_arrays(msg.content["arrays"]))
    server_round = int(msg.content["config"]["server-round"])
    torch.manual_seed(cfg.seed + 1000 * server_round + partition)
    settings = TrainSettings(
        batch_size=p.batch_size,
        local_steps=p.local_steps,
        learning_rate=p.learning_rate,
        warmup_iters=p.warmup_iters,
        lr_decay_iters=cfg.lr_decay_iters,
    )
    metrics = train_round(model, data, server_round, settings, pick_device())

    # FedAvg weight: batches in the whole shard, as the reference (quirk 9).
    num_examples = math.ceil(len(data) / p.batch_size)
    content = RecordDict(
        {
            "arrays": arrays_to_record(model_to_arrays(model)),
            "metrics": MetricRecord(
                {"train_loss": metrics["train_loss"], "num-examples": num_examples}
            ),
        }
    )
    return Message(content, reply_to=msg)
