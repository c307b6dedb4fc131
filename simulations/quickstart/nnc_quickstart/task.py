"""Model, data partitions and train/test loops of the quickstart."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

# Centralised test split: the last 297 of scikit-learn's 1797 digits.
NUM_TEST_SAMPLES = 297


class Net(nn.Module):
    """MLP for 8x8 digits: 64 -> 64 -> 10 (4,810 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def load_partition(
    partition_id: int, num_partitions: int
) -> tuple[np.ndarray, np.ndarray]:
    """IID share ``partition_id`` of the training digits (fixed shuffle)."""
    x, y = _digits()
    x, y = x[:-NUM_TEST_SAMPLES], y[:-NUM_TEST_SAMPLES]
    order = np.random.default_rng(2026).permutation(len(x))
    share = np.array_split(order, num_partitions)[partition_id]
    return x[share], y[share]


def load_test_set() -> tuple[np.ndarray, np.ndarray]:
    x, y = _digits()
    return x[-NUM_TEST_SAMPLES:], y[-NUM_TEST_SAMPLES:]


def train(
    net: Net,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> float:
    """Plain SGD; returns the mean loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    last_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(net(inputs[batch]), labels[batch])
            loss.backward()
            optimiser.step()
            losses.append(float(loss))
        last_loss = float(np.mean(losses))
    return last_loss


@torch.no_grad()
def test(net: Net, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    net.eval()
    logits = net(torch.from_numpy(x))
    labels = torch.from_numpy(y)
    loss = float(nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    return loss, accuracy
