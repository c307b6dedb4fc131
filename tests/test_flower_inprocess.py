"""NNCFedAvg / NNCStrategy + nnc_mod + the real codec, driven in-process.

A fake Grid hands every message to a ClientApp in this process, with one
persistent Context per node, so Strategy.start() runs unchanged without servers
or Ray. Each message crosses the "wire" as a deep copy, and the grid records
the array bytes it carries.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM
from flwr.supercore.task_identity import TaskIdentity

from flwr_nncodec import NNCFedAvg, NNCMod, NNCStrategy, nnc_mod
from flwr_nncodec import flower_link as link
from flwr_nncodec.mod import NodeLinkState

NUM_FEATURES, NUM_OUTPUTS = 64, 16
NEAR_LOSSLESS = dict(
    diff_qp=-80, qp=-80, nonweight_qp=-80, sparsity=0.0, struct_spars_factor=0.0
)


# -- a tiny federated linear regression -------------------------------------


def _node_data(partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + partition_id)
    true_w = np.random.default_rng(7).normal(size=(NUM_OUTPUTS, NUM_FEATURES))
    x = rng.normal(size=(40 + 10 * partition_id, NUM_FEATURES)).astype(np.float32)
    y = (x @ true_w.T + 0.1 * rng.normal(size=(len(x), NUM_OUTPUTS))).astype(np.float32)
    return x, y


def _loss(arrays: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    prediction = x @ arrays["fc.weight"].T + arrays["fc.bias"]
    return float(np.mean((prediction - y) ** 2))


def _make_client_app(mods: list) -> ClientApp:
    """Linear regression trained by 5 full-batch gradient steps per round.

    An integer ``steps`` tensor, when the model has one, counts the steps like
    a BatchNorm ``num_batches_tracked`` buffer.
    """
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        assert not any(k.startswith("nnc.") for k in msg.content["config"])
        x, y = _node_data(int(context.node_config["partition-id"]))
        w, b = arrays["fc.weight"].copy(), arrays["fc.bias"].copy()
        for _ in range(5):
            error = x @ w.T + b - y
            w -= np.float32(0.05) * (error.T @ x) / len(x)
            b -= np.float32(0.05) * error.mean(axis=0)
        trained = {"fc.weight": w.astype(np.float32), "fc.bias": b.astype(np.float32)}
        if "steps" in arrays:
            trained["steps"] = np.asarray(np.asarray(arrays["steps"]) + 5)
        metrics = {"train-loss": _loss(trained, x, y), "num-examples": len(x)}
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
                "metrics": MetricRecord(metrics),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        x, y = _node_data(int(context.node_config["partition-id"]))
        metrics = {"eval-loss": _loss(arrays, x, y), "num-examples": len(x)}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def _initial_arrays(with_int_buffer: bool = False) -> ArrayRecord:
    rng = np.random.default_rng(3)
    arrays = {
        "fc.weight": Array(
            rng.normal(0, 0.3, (NUM_OUTPUTS, NUM_FEATURES)).astype(np.float32)
        ),
        "fc.bias": Array(np.zeros(NUM_OUTPUTS, np.float32)),
    }
    if with_int_buffer:
        arrays["steps"] = Array(np.array(0, dtype=np.int64))
    return ArrayRecord(arrays)


# -- the fake grid ------------------------------------------------------------


class LoopbackGrid(Grid):
    """Runs each message through ``app`` in-process; records wire bytes per round."""

    def __init__(self, app: ClientApp, num_nodes: int) -> None:
        self.app = app
        self.contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self.bytes_down: list[int] = []
        self.bytes_up: list[int] = []
        self.errors: list[int] = []
        self.before_send: Callable[[int, Message], None] | None = None
        self.tamper_reply: Callable[[int, Message], None] | None = None
        # Replies for which this returns True never reach the server (a node
        # past the round timeout): the node has sent them, the server has not
        # seen them.
        self.lose_reply: Callable[[int, Message], bool] | None = None
        self.calls = 0

    def set_run(self, run) -> None:  # noqa: D102
        raise NotImplementedError

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None):
        self.calls += 1
        replies, sent, received, errors = [], 0, 0, 0
        for message in messages:
            node_id = message.metadata.dst_node_id
            if self.before_send:
                self.before_send(self.calls, message)
            sent += _array_bytes(message)
            wire = Message(
                metadata=copy.deepcopy(message.metadata),
                content=copy.deepcopy(message.content),
            )
            try:
                reply = self.app(wire, self.contexts[node_id])
            except Exception as err:  # the SuperNode turns exceptions into errors
                reply = Message(Error(code=2, reason=repr(err)), reply_to=wire)
            if self.lose_reply and self.lose_reply(self.calls, reply):
                continue
            if reply.has_error():
                errors += 1
            else:
                if self.tamper_reply:
                    self.tamper_reply(self.calls, reply)
                received += _array_bytes(reply)
            replies.append(
                Message(metadata=reply.metadata, content=copy.deepcopy(reply.content))
                if reply.has_content()
                else reply
            )
        self.bytes_down.append(sent)
        self.bytes_up.append(received)
        self.errors.append(errors)
        return replies


def _record_error_reasons(grid: LoopbackGrid) -> list[str]:
    """Wrap the grid's ClientApp; the returned list collects every error reason."""
    reasons: list[str] = []
    app = grid.app

    def recording_app(message: Message, context: Context) -> Message:
        reply = app(message, context)
        if reply.has_error():
            reasons.append(reply.error.reason)
        return reply

    grid.app = recording_app
    return reasons


def _array_bytes(message: Message) -> int:
    return sum(
        len(a.data) for r in message.content.array_records.values() for a in r.values()
    )


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages built outside a Flower process need a task identity."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _run(strategy, grid: LoopbackGrid, num_rounds: int, seed: int = 0, **model):
    random.seed(seed)  # node sampling
    return strategy.start(
        grid=grid,
        initial_arrays=_initial_arrays(**model),
        num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": 0.05}),
    )


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


# -- tests --------------------------------------------------------------------


def test_near_lossless_nncfedavg_matches_fedavg():
    """With a very fine qp and no sparsity, NNCFedAvg's model is FedAvg's."""
    # Prepare
    plain = LoopbackGrid(_make_client_app([]), num_nodes=3)
    coded = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    common = dict(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)

    # Execute
    expected = _run(FedAvg(**common), plain, num_rounds=4)
    result = _run(NNCFedAvg(**common, **NEAR_LOSSLESS), coded, num_rounds=4)

    # Assert
    got, want = _arrays(result.arrays), _arrays(expected.arrays)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-5)
    assert sum(coded.errors) == 0
    assert result.train_metrics_clientapp[4]["nnc-models-up"] == 3


def test_default_options_compress_and_train(tmp_path):
    """Default (lossy, sparsified, TCA) links: the loss falls and bytes shrink."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    strategy = NNCFedAvg(min_available_nodes=3, results_dir=tmp_path)

    # Execute
    result = _run(strategy, grid, num_rounds=5)

    # Assert
    losses = [result.evaluate_metrics_clientapp[r]["eval-loss"] for r in (1, 5)]
    assert losses[1] < 0.5 * losses[0]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2, 3, 4, 5]
    assert history["totals"]["bytes_float32"] > 3 * (
        history["totals"]["bytes_down"] + history["totals"]["bytes_up"]
    )
    assert sum(grid.errors) == 0


def test_reported_bytes_equal_payload_bytes(tmp_path):
    """history.json and the MetricRecords count exactly the arrays on the wire."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    strategy = NNCFedAvg(min_available_nodes=3, results_dir=tmp_path)

    # Execute
    result = _run(strategy, grid, num_rounds=3)

    # Assert: two grid calls per round (train, evaluate)
    history = json.loads((tmp_path / "history.json").read_text())
    num_params = NUM_OUTPUTS * NUM_FEATURES + NUM_OUTPUTS
    assert history["num_parameters"] == num_params
    for entry in history["rounds"]:
        r = entry["round"]
        calls = slice(2 * (r - 1), 2 * r)
        assert entry["bytes_down"] == sum(grid.bytes_down[calls])
        assert entry["bytes_up"] == sum(grid.bytes_up[calls])
        assert entry["bytes_float32"] == (3 + 3 + 3) * num_params * 4
        train = result.train_metrics_clientapp[r]
        assert train["nnc-bytes-up"] == grid.bytes_up[2 * (r - 1)]
        assert train["nnc-bytes-down"] == grid.bytes_down[2 * (r - 1)]
        evaluate = result.evaluate_metrics_clientapp[r]
        assert evaluate["nnc-round-bytes-down"] == entry["bytes_down"]
    # After round 1, train messages find every node in sync: no downlink bytes.
    assert grid.bytes_down[2] == 0 and grid.bytes_down[4] == 0
    assert grid.bytes_up[0] > 0


def test_codec_options_travel_with_the_manifest_and_after_a_change():
    """A node gets the options once, with the manifest, and codes with its
    stored copy; options changed on the server go out once more."""
    # Prepare: note which downlink messages carry options and the qp of the
    # weight NDU of every coded reply.
    from flwr_nncodec import inspect

    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=2)
    strategy = NNCFedAvg(min_available_nodes=2, diff_qp=-30, sparsity=0.0)
    carries_options: dict[int, list[bool]] = {}
    uplink_qp: dict[int, set[int]] = {}

    def spy(call: int, message: Message) -> None:
        if call == 2 and not carries_options.get(2):  # round 1 evaluate
            strategy.codec.options = strategy.codec.options.with_overrides(
                diff_qp=-28
            )  # takes effect from the round 2 messages on
        config = message.content["config"]
        carries_options.setdefault(call, []).append("nnc.diff_qp" in config)

    def read_qp(call: int, reply: Message) -> None:
        if "arrays" not in reply.content:  # evaluate replies
            return
        payload = reply.content["arrays"][link.PAYLOAD_KEY]
        for unit in inspect(bytes(payload.data)):
            if unit["type"] == "NDU" and len(unit["shape"]) == 2:
                uplink_qp.setdefault(call, set()).add(unit["qp"])

    grid.before_send, grid.tamper_reply = spy, read_qp

    # Execute
    _run(strategy, grid, num_rounds=3)

    # Assert: calls 1, 3, 5 train; 2, 4, 6 evaluate.
    assert carries_options == {
        1: [True, True],  # with the manifest
        2: [False, False],
        3: [True, True],  # diff_qp changed
        4: [False, False],
        5: [False, False],
        6: [False, False],
    }
    assert uplink_qp == {1: {-30}, 3: {-28}, 5: {-28}}
    assert grid.errors == [0] * 6
    # Rounds 2 and 3 send the same link entries but for round 2's options.
    from flwr_nncodec.strategies.traffic import config_bytes

    history = strategy.codec.history()["rounds"]
    options_bytes = config_bytes(strategy.codec.options.to_config())
    # 15 keys "nnc.<name>" (232 B), 4 ints and 3 floats (8 B each), 8 bools
    assert options_bytes == 232 + 7 * 8 + 8
    assert history[1]["config_bytes_down"] - history[2]["config_bytes_down"] == (
        2 * options_bytes
    )


def test_first_model_is_coded_with_qp_and_differences_with_diff_qp():
    """Downlink version 1 (the whole model) carries qp, later versions and
    every uplink update diff_qp, as NNCodec uses the two."""
    from flwr_nncodec import inspect

    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=2)
    strategy = NNCFedAvg(min_available_nodes=2, qp=-36, diff_qp=-28)
    down_qps: dict[int, list[int]] = {}
    up_qps: dict[int, set[int]] = {}

    def read_down(call: int, message: Message) -> None:
        config = message.content["config"]
        segments = link.unpack_segments(
            message.content["arrays"][link.PAYLOAD_KEY],
            config["nnc.segments"],
            config["nnc.crc32"],
        )
        seen = down_qps.setdefault(call, [])
        for segment in segments:
            qps = {u["qp"] for u in inspect(segment) if u.get("shape", ())[1:]}
            seen.append(qps.pop())

    def read_up(call: int, reply: Message) -> None:
        if "arrays" in reply.content:
            data = bytes(reply.content["arrays"][link.PAYLOAD_KEY].data)
            qps = {u["qp"] for u in inspect(data) if u.get("shape", ())[1:]}
            up_qps.setdefault(call, set()).update(qps)

    grid.before_send, grid.tamper_reply = read_down, read_up
    _run(strategy, grid, num_rounds=2)

    # calls: 1 train (v1), 2 evaluate (v2), 3 train (nothing new), 4 evaluate
    assert down_qps == {1: [-36, -36], 2: [-28, -28], 3: [], 4: [-28, -28]}
    assert up_qps == {1: {-28}, 3: {-28}}


@pytest.mark.parametrize(
    "catchup_bytes_limit", [None, 0], ids=["chain-replay", "keyframe"]
)
def test_node_that_loses_its_state_is_resynced(catchup_bytes_limit):
    """A node wiped mid-run fails one round, is resynced, and the run completes."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    victim = 1001
    strategy = NNCFedAvg(min_available_nodes=3, catchup_bytes_limit=catchup_bytes_limit)

    def wipe(call: int, message: Message) -> None:
        if call == 5 and message.metadata.dst_node_id == victim:  # round 3 train
            grid.contexts[victim].state = RecordDict()

    grid.before_send = wipe

    # Execute
    result = _run(strategy, grid, num_rounds=5)

    # Assert
    assert grid.errors == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert result.train_metrics_clientapp[3]["nnc-models-up"] == 2
    assert result.train_metrics_clientapp[4]["nnc-models-up"] == 3
    history = strategy.codec.history()
    assert history["rounds"][2]["resyncs"] == 1  # the round-3 evaluate message
    assert strategy.codec.nodes[victim].version == strategy.codec.version
    if catchup_bytes_limit == 0:
        # The keyframe carries the float32 reference and the TCA base.
        keyframe_floor = 4 * (NUM_OUTPUTS * NUM_FEATURES + NUM_OUTPUTS)
        assert history["rounds"][2]["phases"]["evaluate"]["bytes_down"] > keyframe_floor


def test_partial_participation_five_rounds_matches_fedavg():
    """fraction 0.5 of 4 nodes: stale nodes catch up; model equals FedAvg's."""
    # Prepare
    plain = LoopbackGrid(_make_client_app([]), num_nodes=4)
    coded = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=4)
    common = dict(
        fraction_train=0.5,
        fraction_evaluate=0.5,
        min_train_nodes=2,
        min_evaluate_nodes=2,
        min_available_nodes=4,
    )

    # Execute
    expected = _run(FedAvg(**common), plain, num_rounds=5, seed=11)
    strategy = NNCFedAvg(**common, **NEAR_LOSSLESS)
    result = _run(strategy, coded, num_rounds=5, seed=11)

    # Assert
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3, 4, 5]
    assert sum(coded.errors) == 0
    got, want = _arrays(result.arrays), _arrays(expected.arrays)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-5)
    segments_sent = [
        r["phases"]["train"]["bytes_down"] for r in strategy.codec.history()["rounds"]
    ]
    assert all(b > 0 for b in segments_sent)  # half the nodes are stale each round


def test_two_lost_replies_in_a_row_restart_the_uplink_base_cleanly():
    """A node whose train replies are lost in rounds 2 and 3 restarts its
    uplink TCA base each time; its round-4 reply decodes (it used to be coded
    on a base the server did not hold, both sides counting #1)."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    plain = LoopbackGrid(_make_client_app([]), num_nodes=3)
    victim = 1001

    def lose(call: int, reply: Message) -> bool:
        # Calls 3 and 5: the train rounds 2 and 3.
        return call in (3, 5) and reply.metadata.src_node_id == victim

    grid.lose_reply = lose
    plain.lose_reply = lose
    strategy = NNCFedAvg(min_available_nodes=2, **NEAR_LOSSLESS)

    # Execute
    expected = _run(FedAvg(min_available_nodes=2), plain, num_rounds=6)
    result = _run(strategy, grid, num_rounds=6)

    # Assert
    history = strategy.codec.history()
    assert [r["decode_failures"] for r in history["rounds"]] == [0] * 6
    models_up = [result.train_metrics_clientapp[r]["nnc-models-up"] for r in range(1, 7)]
    assert models_up == [3, 2, 2, 3, 3, 3]
    node_state = NodeLinkState.load(grid.contexts[victim].state)
    server_view = strategy.codec.nodes[victim]
    assert (server_view.up_base_id, server_view.up_seq) == (
        node_state.up_base_id, node_state.up_seq)
    assert node_state.up_base_id > 0 and node_state.up_seq == 3
    got, want = _arrays(result.arrays), _arrays(expected.arrays)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-5)


@pytest.mark.parametrize("damage", ["flip-byte", "truncate-with-valid-crc"])
def test_corrupt_reply_is_dropped_and_counted(damage):
    """A reply that fails to decode is logged, counted and dropped; the run goes on."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    strategy = NNCFedAvg(min_available_nodes=3)
    victim = 1002

    def tamper(call: int, reply: Message) -> None:
        if call != 3 or reply.metadata.src_node_id != victim:  # round 2 train
            return
        payload = reply.content["arrays"][link.PAYLOAD_KEY]
        data = bytearray(payload.data)
        link_record = reply.content[link.LINK_RECORD_KEY]
        if damage == "flip-byte":
            data[len(data) // 2] ^= 0x5A
        else:
            data = data[: len(data) // 2]
            link_record[link.KEY_SEGMENTS] = [len(data)]
            link_record[link.KEY_CRC32] = __import__("zlib").crc32(bytes(data))
        reply.content["arrays"] = ArrayRecord(
            {
                link.PAYLOAD_KEY: Array(
                    "uint8", (len(data),), link.PAYLOAD_STYPE, bytes(data)
                )
            }
        )

    grid.tamper_reply = tamper

    # Execute
    result = _run(strategy, grid, num_rounds=4)

    # Assert
    history = strategy.codec.history()
    assert [r["decode_failures"] for r in history["rounds"]] == [0, 1, 0, 0]
    assert result.train_metrics_clientapp[2]["nnc-models-up"] == 3
    assert result.train_metrics_clientapp[2]["nnc-decode-failures"] == 1
    # The uplink base of the victim restarted and its later replies decode.
    assert result.train_metrics_clientapp[3]["nnc-decode-failures"] == 0
    assert strategy.codec.nodes[victim].up_seq == 2


def test_nncstrategy_wraps_fedavgm():
    """NNCStrategy codes FedAvgM's traffic; near-lossless it equals plain FedAvgM."""
    # Prepare
    plain = LoopbackGrid(_make_client_app([]), num_nodes=3)
    coded = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    common = dict(min_available_nodes=3, server_momentum=0.5)

    # Execute
    expected = _run(FedAvgM(**common), plain, num_rounds=3)
    result = _run(NNCStrategy(FedAvgM(**common), **NEAR_LOSSLESS), coded, num_rounds=3)

    # Assert
    got, want = _arrays(result.arrays), _arrays(expected.arrays)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=5e-5)
    assert sum(coded.errors) == 0


def test_mod_passes_through_plain_messages():
    """Without nnc.* config (plain FedAvg) the mod changes nothing."""
    # Prepare
    with_mod = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=2)
    without = LoopbackGrid(_make_client_app([]), num_nodes=2)

    # Execute
    a = _run(FedAvg(), with_mod, num_rounds=2)
    b = _run(FedAvg(), without, num_rounds=2)

    # Assert
    for name, value in _arrays(b.arrays).items():
        np.testing.assert_array_equal(_arrays(a.arrays)[name], value)
    assert with_mod.bytes_up == without.bytes_up


@pytest.mark.parametrize(
    "options",
    [
        dict(compress_downstream=False),
        dict(compress_upstream=False),
        dict(compress_differences=False),
        dict(tca=False, err_accumulation=False),
        dict(use_dq=True),
        dict(scan_order=1),
    ],
    ids=["plain-downlink", "plain-uplink", "whole-models", "no-tca", "dq",
         "block-scan"],
)
def test_option_variants_match_fedavg_near_lossless(options):
    """Every link variant stays in sync: near-lossless it reproduces FedAvg."""
    # Prepare
    plain = LoopbackGrid(_make_client_app([]), num_nodes=3)
    coded = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)

    # Execute
    expected = _run(FedAvg(min_available_nodes=3), plain, num_rounds=3)
    strategy = NNCFedAvg(min_available_nodes=3, **{**NEAR_LOSSLESS, **options})
    result = _run(strategy, coded, num_rounds=3)

    # Assert
    got, want = _arrays(result.arrays), _arrays(expected.arrays)
    tolerance = 1e-4 if options.get("use_dq") else 2e-5
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=tolerance)
    assert sum(coded.errors) == 0
    history = strategy.codec.history()
    num_params = NUM_OUTPUTS * NUM_FEATURES + NUM_OUTPUTS
    if options.get("compress_upstream") is False:
        # Plain float32 weights (plus .npy headers) travel up.
        assert history["totals"]["bytes_up"] > 3 * 3 * num_params * 4
    if options.get("compress_downstream") is False:
        assert history["rounds"][1]["bytes_down"] > 6 * num_params * 4
    if options.get("scan_order"):
        # Both links coded block scans: the same run in raster order moves
        # other byte counts (entry points, context restarts) up and down.
        raster = NNCFedAvg(min_available_nodes=3, **NEAR_LOSSLESS)
        _run(raster, LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3),
             num_rounds=3)
        raster_totals = raster.codec.history()["totals"]
        assert history["totals"]["bytes_up"] != raster_totals["bytes_up"]
        assert history["totals"]["bytes_down"] != raster_totals["bytes_down"]


def test_integer_buffers_travel_losslessly():
    """An int64 0-d buffer is coded as NNC integers; FedAvg's float cast restarts
    the chain once and the run still reproduces FedAvg."""
    # Prepare
    plain = LoopbackGrid(_make_client_app([]), num_nodes=3)
    coded = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)

    # Execute
    expected = _run(FedAvg(min_available_nodes=3), plain, 3, with_int_buffer=True)
    strategy = NNCFedAvg(min_available_nodes=3, **NEAR_LOSSLESS)
    result = _run(strategy, coded, 3, with_int_buffer=True)

    # Assert
    got, want = _arrays(result.arrays), _arrays(expected.arrays)
    assert got["steps"].shape == () and float(got["steps"]) == 15.0
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-5)
    assert sum(coded.errors) == 0


def test_nncmod_uplink_override_sends_plain_weights():
    """NNCMod(compress_upstream=False) on the nodes: server takes plain replies."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([NNCMod(compress_upstream=False)]), 3)
    strategy = NNCFedAvg(min_available_nodes=3)

    # Execute
    _run(strategy, grid, num_rounds=2)

    # Assert
    num_params = NUM_OUTPUTS * NUM_FEATURES + NUM_OUTPUTS
    for entry in strategy.codec.history()["rounds"]:
        assert entry["bytes_up"] == sum(
            grid.bytes_up[2 * entry["round"] - 2 : 2 * entry["round"]]
        )
        assert entry["bytes_up"] > 3 * num_params * 4
        assert entry["decode_failures"] == 0


def test_nncmod_rejects_unknown_option():
    """A misspelt override fails at construction, naming it."""
    with pytest.raises(TypeError, match="diffqp"):
        NNCMod(diffqp=-20)


def test_start_logs_codec_summary_and_round_traffic(caplog):
    """Flower's log shows the NNC settings and each round's bytes and ratio."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=2)
    caplog.set_level("INFO", logger="flwr")

    # Execute
    _run(NNCFedAvg(diff_qp=-30), grid, num_rounds=1)

    # Assert
    text = caplog.text
    assert "NNC (ISO/IEC 15938-17) coding: down + uplink" in text
    assert "diff_qp -30 | qp -26" in text
    assert "nnc: round 1 total:" in text and "vs 24960 B float32" in text  # 6 transfers


def _replace_weights(reply: Message, arrays: dict[str, np.ndarray]) -> None:
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


_GOOD_BIAS = np.zeros(NUM_OUTPUTS, np.float32)
_BAD_PLAIN_REPLIES = {
    "inf-weights": (
        {"fc.weight": np.full((NUM_OUTPUTS, NUM_FEATURES), np.inf, np.float32)},
        "'fc.weight' holds non-finite values",
    ),
    "nan-weights": (
        {"fc.weight": np.full((NUM_OUTPUTS, NUM_FEATURES), np.nan, np.float32)},
        "'fc.weight' holds non-finite values",
    ),
    "wrong-shape": (
        {"fc.weight": np.zeros((3, 3), np.float32)},
        r"'fc.weight' has shape \(3, 3\)",
    ),
    "wrong-dtype": (
        {"fc.weight": np.zeros((NUM_OUTPUTS, NUM_FEATURES), np.float64)},
        "'fc.weight' has dtype float64",
    ),
    "wrong-keys": ({"evil": np.zeros((3, 3), np.float32)}, r"\['evil'\]"),
}


@pytest.mark.parametrize("path", ["kind-full", "no-link-record", "uplink-off"])
@pytest.mark.parametrize("bad", sorted(_BAD_PLAIN_REPLIES))
def test_bad_plain_reply_is_dropped_and_counted(caplog, path, bad):
    """Plain weights that bypass coding are checked like decoded ones: a reply
    with wrong keys, shapes, dtypes or non-finite values is dropped with a
    warning naming the tensor, and the run goes on with a finite model."""
    # Prepare
    mods = [NNCMod(compress_upstream=False)] if path == "uplink-off" else [nnc_mod]
    grid = LoopbackGrid(_make_client_app(mods), num_nodes=3)
    strategy = NNCFedAvg(min_available_nodes=3)
    victim = 1000
    weights, message = _BAD_PLAIN_REPLIES[bad]
    weights = dict(weights)
    if bad != "wrong-keys":
        weights["fc.bias"] = _GOOD_BIAS

    def tamper(call: int, reply: Message) -> None:
        if call != 3 or reply.metadata.src_node_id != victim:  # round 2 train
            return
        _replace_weights(reply, weights)
        if path == "kind-full":
            reply.content[link.LINK_RECORD_KEY][link.KEY_KIND] = link.KIND_FULL
        elif path == "no-link-record":
            del reply.content[link.LINK_RECORD_KEY]

    grid.tamper_reply = tamper
    caplog.set_level("WARNING", logger="flwr")

    # Execute
    result = _run(strategy, grid, num_rounds=3)

    # Assert
    history = strategy.codec.history()
    assert [r["decode_failures"] for r in history["rounds"]] == [0, 1, 0]
    assert result.train_metrics_clientapp[2]["nnc-decode-failures"] == 1
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    dropped = [w for w in warnings if f"train reply of node {victim} dropped" in w]
    assert len(dropped) == 1
    assert __import__("re").search(message, dropped[0]), dropped[0]
    final = _arrays(result.arrays)
    assert final["fc.weight"].shape == (NUM_OUTPUTS, NUM_FEATURES)
    assert all(np.all(np.isfinite(v)) for v in final.values())


def test_non_finite_global_model_is_named():
    """A global model with NaN fails at the broadcast with the tensor's name,
    not inside the codec."""
    # Prepare
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=2)
    initial = _initial_arrays()
    weight = initial["fc.weight"].numpy()
    weight[3, 5] = np.nan
    weight[0, 0] = -np.inf
    initial["fc.weight"] = Array(weight)

    # Execute / Assert
    with pytest.raises(ValueError, match="tensor 'fc.weight' holds 2 non-finite"):
        NNCFedAvg().start(grid=grid, initial_arrays=initial, num_rounds=1)
    assert grid.calls == 0


def _echo_client_app(mods: list, received: list) -> ClientApp:
    """Records what each node receives; floats move by -0.01, integers by +5,
    bool tensors come back negated."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        received.append(arrays)
        trained = {}
        for name, value in arrays.items():
            if value.dtype == np.bool_:
                trained[name] = np.asarray(~value)
            elif np.issubdtype(value.dtype, np.integer):
                trained[name] = np.asarray(value + value.dtype.type(5))
            else:
                trained[name] = np.asarray(value - value.dtype.type(0.01))
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": 10})}), reply_to=msg
        )

    return app


def test_uncodable_integer_tensors_travel_plain():
    """int64 beyond int32, uint64 (plain) and bool (coded as 0/1) tensors reach
    every node exactly and come back exactly; the run does not abort."""
    # Prepare
    received: list[dict[str, np.ndarray]] = []
    grid = LoopbackGrid(_echo_client_app([nnc_mod], received), num_nodes=3)
    initial = {
        "w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6),
        "steps": np.array(2**40 + 3, np.int64),
        "u64": np.array([2**50 + 7, 1, 2**40], np.uint64),
        "mask": np.array([True, False, True]),
    }
    sent_keys: list[list[str]] = []
    grid.before_send = lambda call, message: sent_keys.append(
        sorted(message.content["arrays"].keys())
    )

    # Execute
    strategy = NNCFedAvg(min_available_nodes=3, **NEAR_LOSSLESS)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
        num_rounds=1,
    )

    # Assert
    assert sum(grid.errors) == 0
    assert sent_keys[0] == [link.PAYLOAD_KEY, "nnc.plain/0/steps", "nnc.plain/0/u64"]
    first_round = received[:3]
    for arrays in first_round:
        assert arrays["steps"].dtype == np.int64 and arrays["steps"] == 2**40 + 3
        assert arrays["u64"].dtype == np.uint64
        assert arrays["u64"].tolist() == [2**50 + 7, 1, 2**40]
        assert arrays["mask"].dtype == np.bool_
        assert arrays["mask"].tolist() == [True, False, True]
    history = strategy.codec.history()
    assert [r["decode_failures"] for r in history["rounds"]] == [0]
    # FedAvg averages the exactly decoded uplink values (as float64).
    final = _arrays(result.arrays)
    assert float(final["steps"]) == 2**40 + 8
    assert final["u64"][1:].tolist() == [6.0, 2**40 + 5]
    assert final["mask"].tolist() == [0.0, 1.0, 0.0]


def test_oversized_downlink_stream_is_refused_by_the_node(monkeypatch):
    """A downlink segment whose tensor is 4096x the announced model never
    reaches the node's decoder; the node asks for a resync and catches up."""
    # Prepare
    import flwr_nncodec.codec as codec
    from flwr_nncodec import encode

    decoded_sizes: list[int] = []
    real_decode = codec.decode

    def spy(bitstream, **kwargs):
        decoded_sizes.append(len(bytes(bitstream)))
        return real_decode(bitstream, **kwargs)

    monkeypatch.setattr(codec, "decode", spy)
    # Tensor "0" is fc.weight: a stream the node would take but for its size.
    bomb = encode({"0": np.zeros((NUM_OUTPUTS * 64, NUM_FEATURES * 64))})
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=3)
    strategy = NNCFedAvg(min_available_nodes=3)
    victim = 1001
    reasons = _record_error_reasons(grid)

    def tamper(call: int, message: Message) -> None:
        if call != 4 or message.metadata.dst_node_id != victim:  # round 2 evaluate
            return
        config = message.content["config"]
        config[link.KEY_SEGMENTS] = [len(bomb)]
        config[link.KEY_CRC32] = __import__("zlib").crc32(bomb)
        message.content["arrays"] = ArrayRecord(
            {link.PAYLOAD_KEY: Array("uint8", (len(bomb),), link.PAYLOAD_STYPE, bomb)}
        )

    grid.before_send = tamper

    # Execute
    result = _run(strategy, grid, num_rounds=3)

    # Assert
    assert len(bomb) not in decoded_sizes
    assert grid.errors == [0, 0, 0, 1, 0, 0]
    assert len(reasons) == 1 and "4194304 elements, more than the limit" in reasons[0]
    history = strategy.codec.history()
    assert [r["resyncs"] for r in history["rounds"]] == [0, 0, 1]
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]


# -- hostile or broken node state (found by an adversarial pass) -------------


def _reversed_reply_mod(message: Message, context: Context, call_next) -> Message:
    # A ClientApp that returns its tensors in another order than it got them.
    reply = call_next(message, context)
    if reply.has_content() and "arrays" in reply.content:
        record = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord(
            {k: record[k] for k in reversed(list(record.keys()))}
        )
    return reply


def test_reply_tensors_in_another_order_are_accepted(caplog):
    """Tensor order is not part of a model: the run trains as FedAvg does,
    on one chain, with no failed replies."""
    caplog.set_level("WARNING", logger="flwr")
    grid = LoopbackGrid(_make_client_app([nnc_mod, _reversed_reply_mod]), 2)
    strategy = NNCFedAvg(min_available_nodes=2, **NEAR_LOSSLESS)
    result = _run(strategy, grid, num_rounds=3)

    plain_grid = LoopbackGrid(_make_client_app([_reversed_reply_mod]), 2)
    plain = _run(FedAvg(min_available_nodes=2), plain_grid, num_rounds=3)

    assert grid.errors == [0] * 6
    assert "restarting every link" not in caplog.text
    final = _arrays(result.arrays)
    for name, value in _arrays(plain.arrays).items():
        np.testing.assert_allclose(final[name], value, atol=1e-4)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: s.__setitem__("nnc.reference", ConfigRecord({"x": 1})), "unusable"),
        (
            lambda s: s.__setitem__(
                "nnc.residual",
                ArrayRecord({"fc.weight": Array(np.ones(3, np.float32))}),
            ),
            "residual 'fc.weight' does not fit",
        ),
        (
            lambda s: s.__setitem__(
                "nnc.residual",
                ArrayRecord(
                    {"fc.bias": Array(np.full(NUM_OUTPUTS, np.nan, np.float32))}
                ),
            ),
            "residual 'fc.bias' does not fit",
        ),
    ],
    ids=["reference-not-arrays", "residual-wrong-shape", "residual-nan"],
)
def test_corrupt_node_state_is_named_and_recovered(caplog, corrupt, message):
    """Broken stored state costs at most one resync, never every later round."""
    caplog.set_level("WARNING", logger="flwr")
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=2)
    victim = 1000
    strategy = NNCFedAvg(min_available_nodes=2)

    def damage(call: int, msg: Message) -> None:
        if call == 3 and msg.metadata.dst_node_id == victim:  # round 2 train
            corrupt(grid.contexts[victim].state)

    grid.before_send = damage
    _run(strategy, grid, num_rounds=4)

    assert message in caplog.text
    assert sum(grid.errors) <= 1
    assert grid.errors[4:] == [0, 0, 0, 0]


def test_message_with_part_of_the_options_is_refused():
    """Options come all together; a message missing one is not filled with
    defaults but refused, and the node is sent everything again."""
    grid = LoopbackGrid(_make_client_app([nnc_mod]), num_nodes=2)
    strategy = NNCFedAvg(min_available_nodes=2, diff_qp=-40)

    def drop_option(call: int, msg: Message) -> None:
        if call == 1 and msg.metadata.dst_node_id == 1000:
            del msg.content["config"]["nnc.diff_qp"]

    grid.before_send = drop_option
    reasons = _record_error_reasons(grid)
    _run(strategy, grid, num_rounds=2)

    assert grid.errors[0] == 1 and grid.errors[1:] == [0, 0, 0]
    assert "without nnc.diff_qp" in reasons[0]


def test_unpack_payload_checks_the_segment_count_before_allocating():
    """Version numbers from a message cannot make the node allocate per
    claimed segment: a 2-segment payload that claims 10^6 is refused with
    (almost) nothing allocated."""
    import tracemalloc

    record, lengths, crc32 = link.payload_record([b"\x00\x01", b"\x02"], [{}, {}])
    tracemalloc.start()
    with pytest.raises(link.LinkError, match="holds 2 segments, expected 1000000"):
        link.unpack_payload(record, lengths, crc32, expected=10**6)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_bytes < 100_000


@pytest.mark.parametrize(
    "shape", [[4294967295, 4], [4294967295, 4294967295, 4294967295]]
)
def test_manifest_beyond_the_node_limit_is_refused(shape):
    """A manifest is bounded before any reference model is allocated; the
    product of the dims is exact (no int64 wrap-around)."""
    text = json.dumps([["fc.weight", "float32", shape]])
    with pytest.raises(link.LinkError, match=r"more than 268,435,456 values"):
        link.manifest_from_json(text)
    assert link.manifest_from_json(
        json.dumps([["w", "float32", [3, 4]]]), max_elements=12
    ) == (link.TensorSpec("w", "float32", (3, 4)),)
    with pytest.raises(ValueError, match="max_model_elements must be a positive int"):
        NNCMod(max_model_elements=0)
