"""Byte accounting of the NNC links: per round and phase, as metrics and JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FLOAT32_BYTES = 4


@dataclass
class PhaseTraffic:
    """What one phase (train or evaluate) of a round put on the wire."""

    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    models_up: int = 0
    resyncs: int = 0
    decode_failures: int = 0
    # nnc.* ConfigRecord entries on top of the payloads (Flower's own count).
    config_bytes_down: int = 0
    config_bytes_up: int = 0

    def add(self, other: PhaseTraffic) -> None:
        for name in asdict(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RoundTraffic:
    """Traffic of one server round; float32 figures are what FedAvg would send."""

    server_round: int
    num_parameters: int
    phases: dict[str, PhaseTraffic] = field(default_factory=dict)

    def phase(self, name: str) -> PhaseTraffic:
        return self.phases.setdefault(name, PhaseTraffic())

    def total(self) -> PhaseTraffic:
        total = PhaseTraffic()
        for phase in self.phases.values():
            total.add(phase)
        return total

    def summary(self, phase: PhaseTraffic | None = None) -> dict[str, int | float]:
        """Flat figures of one phase, or of the whole round when phase is None."""
        traffic = self.total() if phase is None else phase
        float32_down = traffic.messages_down * self.num_parameters * FLOAT32_BYTES
        float32_up = traffic.models_up * self.num_parameters * FLOAT32_BYTES
        return {
            "bytes_down": traffic.bytes_down,
            "bytes_up": traffic.bytes_up,
            "bytes_float32": float32_down + float32_up,
            "bytes_float32_down": float32_down,
            "bytes_float32_up": float32_up,
            "ratio_down": _ratio(float32_down, traffic.bytes_down),
            "ratio_up": _ratio(float32_up, traffic.bytes_up),
            "ratio": _ratio(
                float32_down + float32_up, traffic.bytes_down + traffic.bytes_up
            ),
            # Everything the links added to the messages: payloads and nnc.*
            # ConfigRecord entries (chain versions, lengths, manifest, options).
            "ratio_with_config": _ratio(
                float32_down + float32_up,
                traffic.bytes_down
                + traffic.bytes_up
                + traffic.config_bytes_down
                + traffic.config_bytes_up,
            ),
            "bits_per_param_down": _bits_per_param(
                traffic.bytes_down, traffic.messages_down, self.num_parameters
            ),
            "bits_per_param_up": _bits_per_param(
                traffic.bytes_up, traffic.models_up, self.num_parameters
            ),
            "messages_down": traffic.messages_down,
            "models_up": traffic.models_up,
            "resyncs": traffic.resyncs,
            "decode_failures": traffic.decode_failures,
            "config_bytes_down": traffic.config_bytes_down,
            "config_bytes_up": traffic.config_bytes_up,
        }

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"round": self.server_round}
        entry.update(self.summary())
        entry["phases"] = {name: self.summary(p) for name, p in self.phases.items()}
        return entry


def metric_entries(summary: dict[str, int | float]) -> dict[str, int | float]:
    """The same figures as MetricRecord keys (``nnc-bytes-down``, ...)."""
    return {"nnc-" + key.replace("_", "-"): value for key, value in summary.items()}


def config_bytes(entries: Any) -> int:
    """Bytes of ConfigRecord entries as Flower counts them (keys included).

    Same rule as ``ConfigRecord.count_bytes`` (numbers 8 bytes, bools 1,
    strings and bytes their length), which fails on empty lists; here an
    empty list counts only its key.
    """
    total = 0
    for key, value in entries.items():
        values = value if isinstance(value, list) else [value]
        total += len(key) + sum(_scalar_bytes(v) for v in values)
    return total


def _scalar_bytes(value: Any) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 8
    return len(value)


def write_history(path: Path, document: dict[str, Any]) -> None:
    """Write history.json atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _ratio(float32_bytes: int, coded_bytes: int) -> float:
    # A phase that sent nothing has no meaningful ratio; report 0.0, never inf.
    return float32_bytes / coded_bytes if coded_bytes else 0.0


def _bits_per_param(coded_bytes: int, transfers: int, num_parameters: int) -> float:
    if not transfers or not num_parameters:
        return 0.0
    return 8.0 * coded_bytes / (transfers * num_parameters)
