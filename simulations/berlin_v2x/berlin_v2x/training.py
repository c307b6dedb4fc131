"""Local training, server evaluation and feature prediction for the TLM.

Follows the study's recipe (eucnc-experiment.md §5.2-§5.4): AdamW with betas
(0.9, 0.95) and weight decay on matrices only, linear warm-up then cosine
decay to zero over rounds x local steps, gradient clipping at 1.0, a fresh
optimizer every round, and no shuffling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import PAD_ID, TokenSequences
from .schema import QOS_KEYS
from .tokenizer import ARROW_ID, TIME_ID, UNK_ID, load_tokenizer

# Token ids that make up numbers: digits 0-9, ".", "-", and the pieces "17."/"18.".
_NUMBER_PIECE_IDS = frozenset([*range(3, 14), 15, 229, 230])
_QOS_KEY_IDS = frozenset(range(148, 162))


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class TrainSettings:
    """Local training hyper-parameters of one client round."""

    batch_size: int
    local_steps: int
    learning_rate: float
    warmup_iters: int
    lr_decay_iters: int
    weight_decay: float = 1e-3
    grad_clip: float = 1.0
    min_learning_rate: float = 0.0


def learning_rate_at(iteration: int, s: TrainSettings) -> float:
    """Linear warm-up to the peak, cosine decay to min_learning_rate after."""
    if iteration < s.warmup_iters:
        return s.learning_rate * iteration / s.warmup_iters
    if iteration > s.lr_decay_iters:
        return s.min_learning_rate
    progress = (iteration - s.warmup_iters) / max(1, s.lr_decay_iters - s.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return s.min_learning_rate + coeff * (s.learning_rate - s.min_learning_rate)


def make_optimizer(
    model: nn.Module, s: TrainSettings, device: torch.device
) -> torch.optim.AdamW:
    """AdamW: weight decay on parameters with >= 2 dims, none on norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=s.learning_rate, betas=(0.9, 0.95), fused=device.type == "cuda"
    )


def train_round(
    model: nn.Module,
    data: TokenSequences,
    server_round: int,
    s: TrainSettings,
    device: torch.device,
    progress=None,
) -> dict[str, float]:
    """Train on the first local_steps batches of the shard; return mean loss.

    The global iteration of step j in round r (1-based) is (r - 1) * steps + j.
    """
    model.to(device).train()
    optimizer = make_optimizer(model, s, device)
    losses = []
    for step, (x, y) in enumerate(data.batches(s.batch_size, s.local_steps)):
        lr = learning_rate_at((server_round - 1) * s.local_steps + step, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_t = torch.from_numpy(x).to(device)
        y_t = torch.from_numpy(y).to(device)
        _, loss = model(x_t, y_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "lr": lr}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TokenSequences,
    batch_size: int,
    max_batches: int | None,
    device: torch.device,
) -> dict[str, float]:
    """Loss, perplexity, top-1 accuracy (padding included, as the paper) and
    masked accuracy (padding targets excluded), accuracies in percent.

    loss and top1 are means over batches, like the reference; masked accuracy
    and masked loss pool all real-token positions.
    """
    model.to(device).eval()
    batch_losses, batch_top1 = [], []
    masked_correct, masked_count, masked_loss_sum = 0, 0, 0.0
    for x, y in data.batches(batch_size, max_batches):
        x_t = torch.from_numpy(x).to(device)
        y_t = torch.from_numpy(y).to(device)
        logits, loss = model(x_t, y_t)
        predicted = logits.argmax(dim=-1)
        correct = predicted == y_t
        real = y_t != PAD_ID
        batch_losses.append(float(loss))
        batch_top1.append(100.0 * float(correct.float().mean()))
        masked_correct += int((correct & real).sum())
        masked_count += int(real.sum())
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y_t.reshape(-1), reduction="none"
        )
        masked_loss_sum += float(token_loss[real.reshape(-1)].sum())
    loss = float(np.mean(batch_losses))
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "top1_accuracy": float(np.mean(batch_top1)),
        "masked_accuracy": 100.0 * masked_correct / max(1, masked_count),
        "masked_loss": masked_loss_sum / max(1, masked_count),
    }


@torch.no_grad()
def generate_after_prompt(
    model: nn.Module,
    prompt: list[int],
    max_seq_len: int,
    device: torch.device,
    max_new_tokens: int = 320,
) -> list[int]:
    """Greedy continuation with a key/value cache until "time", <unk>,
    max_seq_len or max_new_tokens (twice the longest QoS group, so that an
    untrained model that never stops does not run to max_seq_len)."""
    model.to(device).eval()
    caches = [{} for _ in model.layers]
    tokens = torch.tensor([prompt], dtype=torch.long, device=device)
    logits, _ = model(tokens, caches=caches, start_pos=0)
    generated: list[int] = []
    position = len(prompt)
    while position < max_seq_len and len(generated) < max_new_tokens:
        next_id = int(logits[0, -1].argmax())
        if next_id in (TIME_ID, UNK_ID):
            break
        generated.append(next_id)
        if position + 1 >= max_seq_len:
            break
        step = torch.tensor([[next_id]], dtype=torch.long, device=device)
        logits, _ = model(step, caches=caches, start_pos=position)
        position += 1
    return generated


def parse_key_values(token_ids) -> dict[str, float]:
    """First number after each QoS key in a token stream, e.g. RSRP -> -88.1."""
    tokenizer = load_tokenizer()
    values: dict[str, float] = {}
    key: str | None = None
    number = ""
    for token_id in list(token_ids) + [UNK_ID]:
        token_id = int(token_id)
        if token_id in _NUMBER_PIECE_IDS:
            number += tokenizer.pieces[token_id]
            continue
        if number and key is not None and key not in values:
            try:
                values[key] = float(number)
            except ValueError:
                pass
        number = ""
        if token_id in _QOS_KEY_IDS:
            key = tokenizer.pieces[token_id]
    return values


def feature_errors(
    model: nn.Module,
    data: TokenSequences,
    num_rows: int,
    max_seq_len: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Mean absolute relative error (%) per QoS feature of greedy predictions.

    For each test row: prompt = tokens up to and including the last "-->",
    target = the rest. relative error = |pred - gt| / |gt + 1e-10| * 100,
    averaged over rows where both sides carry a value.
    """
    sums = {key: 0.0 for key in QOS_KEYS}
    counts = {key: 0 for key in QOS_KEYS}
    used = 0
    for row in data.padded:
        if used >= num_rows:
            break
        real = row[: int(np.max(np.flatnonzero(row != PAD_ID), initial=-1)) + 1]
        arrows = np.flatnonzero(real == ARROW_ID)
        if arrows.size == 0 or real[0] != TIME_ID:
            continue
        cut = int(arrows[-1]) + 1
        truth = parse_key_values(real[cut:])
        predicted = parse_key_values(
            generate_after_prompt(model, real[:cut].tolist(), max_seq_len, device)
        )
        used += 1
        for key, gt in truth.items():
            if key in predicted:
                sums[key] += abs((predicted[key] - gt) / (gt + 1e-10)) * 100.0
                counts[key] += 1
    return {
        key: {
            "mean_abs_rel_error_pct": sums[key] / counts[key]
            if counts[key]
            else float("nan"),
            "rows": counts[key],
        }
        for key in QOS_KEYS
    }
