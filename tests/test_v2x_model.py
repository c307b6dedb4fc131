"""Berlin V2X app: TLM presets, KV cache, schedule, metrics, checkpoint."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "simulations" / "berlin_v2x")
)

from berlin_v2x.config import resolve  # noqa: E402
from berlin_v2x.data import TokenSequences  # noqa: E402
from berlin_v2x.model import (  # noqa: E402
    TLM_PRESETS,
    TinyLlama,
    arrays_to_model,
    build_model,
    count_unique_parameters,
    model_to_arrays,
)
from berlin_v2x.outputs import save_checkpoint  # noqa: E402
from berlin_v2x.tokenizer import load_tokenizer  # noqa: E402
from berlin_v2x.training import (  # noqa: E402
    TrainSettings,
    evaluate,
    learning_rate_at,
    parse_key_values,
    train_round,
)


@pytest.mark.parametrize(
    "size, unique, state_dict_elements",
    [
        ("0", 409_472, 424_640),  # paper: 409k
        ("1", 10_027_584, 10_095_840),  # paper: 10M (README command)
        ("2", 31_753_216, 31_874_560),  # paper: 32M
        ("3", 85_135_872, 85_317_888),  # the 85M size
    ],
)
def test_parameter_counts_match_the_presets(size, unique, state_dict_elements):
    with torch.device("meta"):
        model = TinyLlama(TLM_PRESETS[size])

    assert count_unique_parameters(model) == unique
    assert sum(v.numel() for v in model.state_dict().values()) == state_dict_elements


def test_tied_embedding_travels_once():
    model = build_model("nano", max_seq_len=32)

    arrays = model_to_arrays(model)

    assert "tok_embeddings.weight" in arrays and "output.weight" not in arrays
    assert sum(a.size for a in arrays.values()) == count_unique_parameters(model)
    arrays["tok_embeddings.weight"][:] = 0.5
    arrays_to_model(model, arrays)
    assert torch.all(model.output.weight == 0.5)
    with pytest.raises(ValueError, match="tok_embeddings.weight: shape"):
        arrays_to_model(
            model, {**arrays, "tok_embeddings.weight": np.zeros((3, 3), np.float32)}
        )


def test_kv_cache_decoding_equals_full_forward():
    model = build_model("0", max_seq_len=48).eval()
    tokens = torch.randint(0, 237, (2, 30), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        full, _ = model(tokens)
        caches = [{} for _ in model.layers]
        parts = [model(tokens[:, :17], caches=caches)[0]]
        for i in range(17, 30):
            parts.append(model(tokens[:, i : i + 1], caches=caches, start_pos=i)[0])

    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_warmup_cosine_schedule():
    s = TrainSettings(
        batch_size=8,
        local_steps=300,
        learning_rate=3e-4,
        warmup_iters=1000,
        lr_decay_iters=9000,
    )

    assert learning_rate_at(0, s) == 0.0
    assert learning_rate_at(500, s) == pytest.approx(1.5e-4)
    assert learning_rate_at(1000, s) == pytest.approx(3e-4)
    assert learning_rate_at(5000, s) == pytest.approx(1.5e-4)
    assert learning_rate_at(9000, s) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate_at(9001, s) == 0.0


class _ConstantModel(torch.nn.Module):
    """Predicts token `answer` everywhere with a fixed margin."""

    def __init__(self, answer: int) -> None:
        super().__init__()
        self.answer = answer

    def forward(self, tokens, targets=None):
        logits = torch.zeros(*tokens.shape, 237)
        logits[..., self.answer] = 5.0
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, 237), targets.reshape(-1)
        )
        return logits, loss


def test_accuracy_with_and_without_padding():
    # Two sequences of 5 real tokens in windows of 10: targets are 4 real + 5 pads each.
    ids = np.array([17, 236, 236, 236, 236, 17, 236, 236, 236, 236], dtype=np.uint8)
    data = TokenSequences(ids, max_seq_len=10)

    predicts_pad = evaluate(
        _ConstantModel(0),
        data,
        batch_size=2,
        max_batches=None,
        device=torch.device("cpu"),
    )
    predicts_space = evaluate(
        _ConstantModel(236),
        data,
        batch_size=2,
        max_batches=None,
        device=torch.device("cpu"),
    )

    # Targets per row: 236 236 236 236 0 0 0 0 0 -> 5 of 9 are padding.
    assert predicts_pad["top1_accuracy"] == pytest.approx(100 * 5 / 9)
    assert predicts_pad["masked_accuracy"] == 0.0
    assert predicts_space["top1_accuracy"] == pytest.approx(100 * 4 / 9)
    assert predicts_space["masked_accuracy"] == 100.0
    assert predicts_space["perplexity"] == pytest.approx(
        math.exp(predicts_space["loss"])
    )


def test_parse_key_values_reads_qos_numbers():
    ids = load_tokenizer().encode(
        "PCell_RSRP_1 = -117.25 PCell_SNR_1 = 18.3 jitter = ping_ms = 5 datarate = 1.2.3"
    )

    assert parse_key_values(ids) == {
        "PCell_RSRP_1": -117.25,
        "PCell_SNR_1": 18.3,
        "ping_ms": 5.0,
    }


def test_training_reduces_loss_and_checkpoint_loads_weights_only(tmp_path):
    ids = np.tile(
        np.array(
            load_tokenizer().encode(
                "time = 1 2 3 4 direction = uplink --> ping_ms = 4 2"
            ),
            dtype=np.uint8,
        ),
        8,
    )
    data = TokenSequences(ids, max_seq_len=40)
    model = build_model("nano", max_seq_len=40, dropout=0.0)
    settings = TrainSettings(
        batch_size=4,
        local_steps=3,
        learning_rate=3e-3,
        warmup_iters=1,
        lr_decay_iters=30,
    )
    before = evaluate(model, data, 4, None, torch.device("cpu"))["loss"]

    for server_round in (1, 2, 3):
        train_round(model, data, server_round, settings, torch.device("cpu"))

    assert evaluate(model, data, 4, None, torch.device("cpu"))["loss"] < before - 0.5
    save_checkpoint(model, tmp_path / "best_model.pt")
    state = torch.load(tmp_path / "best_model.pt", weights_only=True)
    restored = build_model("nano", max_seq_len=40, dropout=0.0)
    restored.load_state_dict(state)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)


def test_run_config_errors_name_the_key():
    assert resolve({"preset": "paper"}).preset.tlm_size == "1"
    assert (
        resolve({"preset": "cpu", "num-server-rounds": 3}).preset.num_server_rounds == 3
    )
    with pytest.raises(ValueError, match="'preset' must be one of"):
        resolve({"preset": "gpu"})
    with pytest.raises(ValueError, match="'mode' must be one of"):
        resolve({"mode": "zip"})
    with pytest.raises(ValueError, match="'data' = 'parquet' needs 'parquet'"):
        resolve({"data": "parquet"})
    with pytest.raises(ValueError, match="unknown TLM size '7'"):
        build_model("7")


def test_round_table_accumulates_bytes_and_ratio():
    from berlin_v2x.outputs import merge_rounds

    rounds = [
        {"round": 1, "loss": 2.0},
        {"round": 0, "loss": 3.0},
        {"round": 2, "loss": 1.5},
    ]
    traffic = {
        1: {
            "bytes_up": 100,
            "bytes_down": 300,
            "bytes_config": 20,
            "bytes_float32": 40_000,
        },
        2: {
            "bytes_up": 50,
            "bytes_down": 50,
            "bytes_config": 10,
            "bytes_float32": 40_000,
        },
    }

    table = merge_rounds(rounds, traffic)

    assert [row["round"] for row in table] == [0, 1, 2]
    assert [row["cumulative_bytes"] for row in table] == [0, 400, 500]
    assert table[2]["cumulative_mb_float32"] == pytest.approx(0.08)
    assert table[2]["ratio"] == pytest.approx(500 / 80_000)


def test_snapped_init_lies_on_the_quantiser_grid():
    from berlin_v2x.experiment import quantizer_step, snap_to_grid

    arrays = model_to_arrays(build_model("nano", max_seq_len=16))
    snapped = snap_to_grid(arrays, -18)

    assert quantizer_step(-18) == 0.046875 and quantizer_step(-32) == 0.00390625
    levels = snapped["layers.0.attention.wq.weight"] / 0.046875
    np.testing.assert_array_equal(levels, np.rint(levels))
    np.testing.assert_array_equal(snapped["norm.weight"], arrays["norm.weight"])


def test_save_updates_writes_each_rounds_global_difference(tmp_path):
    """save-updates: round_NN.npz holds new minus previous global model
    (float tensors, float32), readable without pickle."""
    from berlin_v2x.experiment import save_update

    assert resolve({"save-updates": True}).save_updates
    assert not resolve({}).save_updates
    rounds = [
        {"w": np.full((2, 3), 0.5, np.float32), "b": np.zeros(3, np.float32)},
        {"w": np.full((2, 3), 0.75, np.float32), "b": np.ones(3, np.float32)},
        {"w": np.full((2, 3), 0.25, np.float32), "b": np.ones(3, np.float32)},
    ]
    previous: dict = {}
    for server_round, model in enumerate(rounds):
        previous = save_update(tmp_path, server_round, model, previous)

    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["round_01.npz", "round_02.npz"]
    with np.load(tmp_path / "round_02.npz", allow_pickle=False) as update:
        np.testing.assert_array_equal(update["w"], np.full((2, 3), -0.5, np.float32))
        np.testing.assert_array_equal(update["b"], np.zeros(3, np.float32))
        assert update["w"].dtype == np.float32
