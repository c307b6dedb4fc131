"""Rate-distortion lower bounds for the synthetic inputs, under MSE distortion.

For an i.i.d. source with a density of differential entropy h (bits), the
Shannon lower bound (SLB) is R(D) >= h - 1/2·log2(2·pi·e·D) bits per value at
mean squared error D, and R(D) >= 0 always. For the Gaussian it is R(D) itself,
1/2·log2(s²/D). Writing P = 2^(2h) / (2·pi·e) (the entropy power), the bound
reads max(0, 1/2·log2(P / D)), the Gaussian form with variance P.

A source made of independent parts (rows with their own scale) may spend its
distortion unevenly. Its bound is the least total over all splits D_i with
mean D, which reverse water-filling on the entropy powers gives:
D_i = min(theta, P_i), theta chosen so that the mean of the D_i is D.
No coder, however clever, spends fewer bits on average at that distortion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TWO_PI_E = 2 * math.pi * math.e


def gaussian_entropy_bits(std: float) -> float:
    """Differential entropy of N(0, std²) in bits: 1/2·log2(2·pi·e·std²)."""
    if not std > 0:
        raise ValueError(f"gaussian_entropy_bits: std must be > 0, got {std!r}")
    return 0.5 * math.log2(TWO_PI_E * std * std)


def laplace_entropy_bits(scale: np.ndarray | float) -> np.ndarray | float:
    """Differential entropy of Laplace(0, scale) in bits: log2(2·e·scale)."""
    scale = np.asarray(scale, dtype=np.float64)
    if scale.size and not np.all(scale > 0):
        smallest = float(scale.min())
        raise ValueError(
            f"laplace_entropy_bits: scales must be > 0, smallest is {smallest!r}"
        )
    bits = np.log2(2 * math.e * scale)
    return float(bits) if bits.ndim == 0 else bits


def entropy_power(entropy_bits: np.ndarray | float) -> np.ndarray:
    """Variance of the Gaussian with the same differential entropy."""
    return np.exp2(2 * np.asarray(entropy_bits, dtype=np.float64)) / TWO_PI_E


def shannon_lower_bound_bits(entropy_bits: float, mse: float) -> float:
    """SLB in bits per value of an i.i.d. source at mean squared error ``mse``."""
    if not mse > 0:
        raise ValueError(f"shannon_lower_bound_bits: mse must be > 0, got {mse!r}")
    return max(0.0, entropy_bits - 0.5 * math.log2(TWO_PI_E * mse))


def water_level(powers: np.ndarray, counts: np.ndarray, mse: float) -> float:
    """theta with sum(counts·min(theta, powers)) = mse·sum(counts).

    Exact: the left side is piecewise linear in theta with knees at the sorted
    powers. When mse reaches the mean power, every part gets D_i = P_i and the
    largest power is returned.
    """
    order = np.argsort(powers)
    powers = np.asarray(powers, dtype=np.float64)[order]
    counts = np.asarray(counts, dtype=np.float64)[order]
    budget = mse * counts.sum()

    # Distortion spent when theta sits at each knee: the parts below are
    # saturated (D_i = P_i), the rest get theta.
    saturated = np.concatenate([[0.0], np.cumsum(counts * powers)[:-1]])
    remaining = counts.sum() - np.concatenate([[0.0], np.cumsum(counts)[:-1]])
    spent_at_knee = saturated + remaining * powers
    if budget >= spent_at_knee[-1]:
        return float(powers[-1])
    knee = int(np.searchsorted(spent_at_knee, budget, side="right"))
    return float((budget - saturated[knee]) / remaining[knee])


def water_filling_bound_bits(
    entropy_bits: np.ndarray, counts: np.ndarray, mse: float
) -> float:
    """Total SLB in bits of independent i.i.d. parts at mean squared error ``mse``.

    Part i has counts[i] values of differential entropy entropy_bits[i] each;
    ``mse`` is the mean over all values. One part gives counts·SLB.
    """
    entropy_bits = np.atleast_1d(np.asarray(entropy_bits, dtype=np.float64))
    counts = np.atleast_1d(np.asarray(counts, dtype=np.float64))
    if entropy_bits.shape != counts.shape or entropy_bits.ndim != 1:
        raise ValueError(
            "water_filling_bound_bits: entropy_bits and counts must be 1-D of one "
            f"length, got shapes {entropy_bits.shape} and {counts.shape}"
        )
    if not mse > 0:
        raise ValueError(f"water_filling_bound_bits: mse must be > 0, got {mse!r}")

    powers = entropy_power(entropy_bits)
    theta = water_level(powers, counts, mse)
    distortions = np.minimum(theta, powers)
    bits_per_value = np.maximum(0.0, 0.5 * np.log2(powers / distortions))
    return float(counts @ bits_per_value)


@dataclass(frozen=True)
class SourceDensity:
    """The distribution an input was drawn from: independent i.i.d. parts.

    ``label`` names it in the table; part i has counts[i] values with
    differential entropy entropy_bits[i] each.
    """

    label: str
    entropy_bits: np.ndarray
    counts: np.ndarray

    def bound_bits(self, mse: float) -> float:
        """Fewest bits any coder can spend on average at mean squared error mse."""
        return water_filling_bound_bits(self.entropy_bits, self.counts, mse)
