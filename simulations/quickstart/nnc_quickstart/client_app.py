"""ClientApp: ordinary Flower train/evaluate code; nnc_mod does the coding."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_nncodec import nnc_mod
from nnc_quickstart.task import Net, load_partition, test, train

torch.set_num_threads(1)

# The only NNC-specific line of the client: the mod around every message.
app = ClientApp(mods=[nnc_mod])


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received model on this node's digits."""
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = int(context.node_config["partition-id"])
    x, y = load_partition(partition_id, int(context.node_config["num-partitions"]))
    server_round = int(msg.content["config"]["server-round"])
    loss = train(
        net,
        x,
        y,
        epochs=int(context.run_config["local-epochs"]),
        lr=float(context.run_config["learning-rate"]),
        batch_size=int(context.run_config["batch-size"]),
        seed=1000 * server_round + partition_id,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": len(x)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's digits."""
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = int(context.node_config["partition-id"])
    x, y = load_partition(partition_id, int(context.node_config["num-partitions"]))
    loss, accuracy = test(net, x, y)
    metrics = {"eval-loss": loss, "eval-accuracy": accuracy, "num-examples": len(x)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
