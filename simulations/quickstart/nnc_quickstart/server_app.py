"""ServerApp: NNCFedAvg in place of FedAvg, plus a central test of each model."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from flwr_nncodec import NNCFedAvg
from nnc_quickstart.task import Net, load_test_set, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg with NNC-coded downlink and uplink."""
    torch.manual_seed(0)
    run_config = context.run_config
    strategy = NNCFedAvg(
        fraction_train=float(run_config["fraction-train"]),
        min_available_nodes=2,
        results_dir=str(run_config["results-dir"]),
        diff_qp=int(run_config["diff-qp"]),
        sparsity=float(run_config["sparsity"]),
        struct_spars_factor=float(run_config["struct-spars-factor"]),
        scan_order=int(run_config["scan-order"]),
    )
    x_test, y_test = load_test_set()

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = Net()
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(net, x_test, y_test)
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        num_rounds=int(run_config["num-server-rounds"]),
        train_config=ConfigRecord({}),
        evaluate_fn=central_evaluate,
    )
