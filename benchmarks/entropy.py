"""Reference points for the level streams: zeroth-order entropy and zstd.

The NNC level coder codes, per tensor and in raster order, the integer k of
each parameter. Without DQ k is the reconstruction index q; with DQ it follows
from q and the trellis state s (nnc-format §2.3), and the state depends on all
earlier levels. ``dq_states_and_levels`` recovers s and k for a whole tensor
with a parallel prefix over the state-transition maps instead of a Python loop.
"""

from __future__ import annotations

import numpy as np

# Next DQ state after a level of even (column 0) or odd (column 1) parity.
DQ_NEXT_STATE = np.array(
    [[0, 2], [7, 5], [1, 3], [6, 4], [2, 0], [5, 7], [3, 1], [4, 6]], dtype=np.int64
)
_MAP_DIGITS = 8 ** np.arange(8, dtype=np.int64)


def _build_transition_semigroup() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All maps state -> state that runs of levels induce, and their composition.

    One parameter with index q induces the map s -> next(s, parity of k(q, s)),
    where the parity depends only on q and on whether s is odd: four generator
    maps. Their closure under composition has 1344 members, so a composition
    table of map ids replaces composing arrays of 8 states.
    Returns (maps[id, s], compose[first_id, then_id], generator_ids[symbol]).
    """
    states = np.arange(8)
    generators = np.array(
        [
            [
                DQ_NEXT_STATE[s, parity_even if s % 2 == 0 else parity_odd]
                for s in states
            ]
            for parity_even in (0, 1)
            for parity_odd in (0, 1)
        ]
    )
    found = {tuple(g) for g in generators}
    frontier = list(found)
    while frontier:
        discovered = []
        for first in frontier:
            first_map = np.array(first)
            for then_map in generators:
                composed = tuple(then_map[first_map])
                if composed not in found:
                    found.add(composed)
                    discovered.append(composed)
        frontier = discovered

    maps = np.array(sorted(found), dtype=np.int64)
    codes = maps @ _MAP_DIGITS
    order = np.argsort(codes)
    maps, codes = maps[order], codes[order]

    count = len(maps)
    first = np.broadcast_to(maps[:, None, :], (count, count, 8))
    then = np.broadcast_to(maps[None, :, :], (count, count, 8))
    composed_maps = np.take_along_axis(then, first, axis=2)
    compose = np.searchsorted(codes, composed_maps @ _MAP_DIGITS).astype(np.int16)
    generator_ids = np.searchsorted(codes, generators @ _MAP_DIGITS).astype(np.int16)
    return maps, compose, generator_ids


_MAPS, _COMPOSE, _GENERATOR_IDS = _build_transition_semigroup()


def dq_states_and_levels(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (s, k) for DQ reconstruction indices q of one tensor, raster order.

    s[i] is the trellis state in which parameter i is coded (starting at 0) and
    k[i] = (q + sgn(q)·(s & 1)) >> 1 the level the entropy coder codes.
    """
    q = np.asarray(q, dtype=np.int64).reshape(-1)
    count = q.size
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    sign = np.sign(q)
    symbol = 2 * ((q >> 1) & 1) + (((q + sign) >> 1) & 1)
    prefix_ids = _GENERATOR_IDS[symbol]
    step = 1
    while step < count:
        prefix_ids[step:] = _COMPOSE[prefix_ids[:-step], prefix_ids[step:]]
        step *= 2

    states = np.zeros(count, dtype=np.int64)
    states[1:] = _MAPS[prefix_ids[:-1], 0]
    levels = (q + sign * (states & 1)) >> 1
    return states, levels


def entropy_bits(symbols: np.ndarray, contexts: np.ndarray | None = None) -> float:
    """Total zeroth-order entropy of ``symbols`` in bits, optionally given a context.

    With ``contexts`` this is n·H(symbol | context): the cost of an ideal coder
    that knows each symbol's context and the empirical distributions.
    """
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size == 0:
        return 0.0
    if contexts is None:
        _, counts = np.unique(symbols, return_counts=True)
        probabilities = counts / symbols.size
        return float(-(counts * np.log2(probabilities)).sum())

    contexts = np.asarray(contexts, dtype=np.int64).reshape(-1)
    pairs = np.stack([contexts, symbols], axis=1)
    _, joint_counts = np.unique(pairs, axis=0, return_counts=True)
    _, context_counts = np.unique(contexts, return_counts=True)
    joint_bits = -(joint_counts * np.log2(joint_counts)).sum()
    context_bits = -(context_counts * np.log2(context_counts)).sum()
    return float(joint_bits - context_bits)


def coded_levels(q: np.ndarray, dq: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Levels k the coder codes for indices q, and the DQ states (None without DQ)."""
    if not dq:
        return np.asarray(q, dtype=np.int64).reshape(-1), None
    states, levels = dq_states_and_levels(q)
    return levels, states


def _dq_of(dq: bool | dict[str, bool], name: str) -> bool:
    return dq[name] if isinstance(dq, dict) else dq


def levels_entropy_bytes(
    levels_by_tensor: dict[str, np.ndarray], dq: bool | dict[str, bool]
) -> float:
    """Sum over tensors of n·H(k) (DQ: n·H(k | s)), in bytes.

    ``dq`` is one flag for all tensors or one per tensor name (integer tensors
    are coded without DQ). Each tensor gets its own empirical distribution, as
    each NDU starts with fresh contexts. Headers and side information are not
    counted.
    """
    total_bits = 0.0
    for name, q in levels_by_tensor.items():
        levels, states = coded_levels(q, _dq_of(dq, name))
        total_bits += entropy_bits(levels, states)
    return total_bits / 8


def zstd_levels_bytes(
    levels_by_tensor: dict[str, np.ndarray], dq: bool | dict[str, bool], level: int = 19
) -> tuple[int, float]:
    """zstd size of all tensors' levels k, concatenated in the narrowest int type.

    Returns (compressed bytes, seconds spent in zstd).
    """
    import time

    import zstandard

    parts = [
        coded_levels(q, _dq_of(dq, name))[0] for name, q in levels_by_tensor.items()
    ]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if stream.size == 0 or (stream.min() >= info.min and stream.max() <= info.max):
            stream = stream.astype(dtype)
            break

    compressor = zstandard.ZstdCompressor(level=level)
    started = time.perf_counter()
    compressed = compressor.compress(stream.tobytes())
    return len(compressed), time.perf_counter() - started
