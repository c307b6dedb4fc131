"""Encoder options: NNCodec's names and defaults, validated up front."""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass, fields

from flwr_nncodec import _core
from flwr_nncodec.base_state import BaseState
from flwr_nncodec.hls import MAX_SCAN_ORDER

__all__ = [
    "DEFAULT_LAMBDA_SCALE",
    "EncodeOptions",
    "make_options",
    "qp_range",
    "resolve_num_threads",
]

# Rate weight of the quantisers: > 0 selects RDOQ (URQ) and the rate-aware
# trellis (DQ); 0 is pure squared error, NNCodec's choice, and reproduces
# NNCodec's streams. See docs/ARCHITECTURE.md §2 for the measurements.
DEFAULT_LAMBDA_SCALE = 0.5
# Largest lambda_scale the core accepts (far beyond useful values; larger
# ones overflow the trellis' path costs).
MAX_LAMBDA_SCALE = float(_core.MAX_LAMBDA_SCALE)
MAX_THREADS = 1024

logger = logging.getLogger(__name__)

APPROX_METHODS = ("uniform", "codebook")
MAX_DEVICE_ID = (1 << 31) - 1


@dataclass(frozen=True)
class EncodeOptions:
    """Validated encoder options (see :func:`flwr_nncodec.encode`)."""

    qp: int = -32
    qp_density: int = 2
    nonweight_qp: int | None = -75
    use_dq: bool = True
    row_skipping: bool = True
    param_opt: bool = True
    bitdepth: int | None = None
    approx_method: str = "uniform"
    lambda_scale: float = DEFAULT_LAMBDA_SCALE
    compress_differences: bool = False
    tca: bool = False
    base: BaseState | None = None
    update_base: bool = False
    device_id: int | None = None  # None: the base's device_id, else 0
    sparsity: float = 0.0
    struct_spars_factor: float = 0.0
    num_threads: int = 0  # encoder threads, 0 = one per available core
    # 0: raster (NNCodec's); 1..4: blocks of 4 << scan_order with entry
    # points, where a matrix allows it (block rows then decode in parallel).
    scan_order: int = 0

    @property
    def effective_nonweight_qp(self) -> int:
        """qp of tensors with ndim <= 1: nonweight_qp, or a quarter step if falsy."""
        if self.nonweight_qp:
            return int(self.nonweight_qp)
        return self.qp - (2 << self.qp_density)


_OPTION_NAMES = tuple(f.name for f in fields(EncodeOptions))


# |qp| the decoder accepts (flwr_nncodec.decode refuses qp <= -4096 and
# qp >= 4096, as NNCodec's step-size table does).
MAX_DECODABLE_QP_MAGNITUDE = 4095


def qp_range(qp_density: int) -> tuple[int, int]:
    """Inclusive qp range the encoder may use: codable in the 6 + qp_density
    bit qp offset (Q9) and accepted by the decoder (|qp| <= 4095, so qp_density
    7 loses -4096). Every qp in it has a finite, non-zero float32 step."""
    half = 1 << (5 + qp_density)
    return (
        max(-half, -MAX_DECODABLE_QP_MAGNITUDE),
        min(half - 1, MAX_DECODABLE_QP_MAGNITUDE),
    )


def make_options(**options: object) -> EncodeOptions:
    """Validate keyword options and return them as :class:`EncodeOptions`.

    Raises ``TypeError`` for an unknown option name or a wrong type and
    ``ValueError`` for a value out of range; messages name the option and
    the value received.
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"unknown encoder option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(_OPTION_NAMES)}"
        )
    defaults = EncodeOptions()
    values = {
        name: options.get(name, getattr(defaults, name)) for name in _OPTION_NAMES
    }

    qp_density = _integer("qp_density", values["qp_density"], 0, 7)
    low, high = qp_range(qp_density)
    values["qp_density"] = qp_density
    values["qp"] = _integer("qp", values["qp"], low, high)
    values["nonweight_qp"] = _nonweight_qp(
        values["nonweight_qp"],
        "nonweight_qp" in options,
        values["qp"],
        qp_density,
    )
    for flag in (
        "use_dq",
        "row_skipping",
        "param_opt",
        "compress_differences",
        "tca",
        "update_base",
    ):
        values[flag] = _boolean(flag, values[flag])
    if values["bitdepth"] is not None:
        values["bitdepth"] = _integer("bitdepth", values["bitdepth"], 2, 31)
    if values["approx_method"] not in APPROX_METHODS:
        raise ValueError(
            f"approx_method must be one of {APPROX_METHODS}, got "
            f"{values['approx_method']!r}"
        )
    values["lambda_scale"] = _real(
        "lambda_scale", values["lambda_scale"], 0.0, MAX_LAMBDA_SCALE
    )
    values["num_threads"] = resolve_num_threads(values["num_threads"])
    values["scan_order"] = _integer(
        "scan_order", values["scan_order"], 0, MAX_SCAN_ORDER
    )
    values["sparsity"] = _real("sparsity", values["sparsity"], 0.0, 1.0)
    values["struct_spars_factor"] = _real(
        "struct_spars_factor", values["struct_spars_factor"], 0.0, None
    )

    base = values["base"]
    if base is not None and not isinstance(base, BaseState):
        raise TypeError(f"base must be a BaseState or None, got {type(base).__name__}")
    if values["device_id"] is None:
        values["device_id"] = base.device_id if base is not None else 0
    values["device_id"] = _integer("device_id", values["device_id"], 0, MAX_DEVICE_ID)
    if base is not None and base.device_id and base.device_id != values["device_id"]:
        raise ValueError(
            f"device_id {values['device_id']} contradicts the base's device_id "
            f"{base.device_id}; leave device_id out to use the base's"
        )
    if values["update_base"] and base is None:
        raise ValueError("update_base=True needs a base (BaseState)")
    if values["tca"] and not values["compress_differences"]:
        raise ValueError(
            "tca=True only acts on differential streams; set "
            "compress_differences=True as well (NNCodec silently ignores it)"
        )
    return EncodeOptions(**values)


def _nonweight_qp(
    value: object, user_set: bool, qp: int, qp_density: int
) -> int | None:
    """The validated nonweight_qp option.

    * set by the caller (non-zero): must lie in :func:`qp_range`;
    * None or 0 (NNCodec's "derive it"): qp - 2**(qp_density + 1) must lie in
      the range; the error says how it was derived;
    * the default -75, left unset, is clamped into the range (qp_density 0
      and 1 cannot code it), with a log line saying so.
    """
    low, high = qp_range(qp_density)
    derives = value is None or (
        not isinstance(value, bool)
        and isinstance(value, numbers.Integral)
        and value == 0
    )
    if derives:
        derived = qp - (2 << qp_density)
        if not low <= derived <= high:
            raise ValueError(
                f"nonweight_qp={value!r} derives the qp of 1-D tensors as "
                f"qp - 2**(qp_density + 1) = {qp} - {2 << qp_density} = {derived}, "
                f"outside the codable range {low}..{high} of qp_density "
                f"{qp_density}; pass nonweight_qp explicitly"
            )
        return value  # type: ignore[return-value]
    if not user_set:
        clamped = min(max(int(value), low), high)  # type: ignore[call-overload]
        if clamped != value:
            logger.info(
                "default nonweight_qp %s is outside the range %d..%d of qp_density "
                "%d; using %d for 1-D tensors (set nonweight_qp to choose)",
                value, low, high, qp_density, clamped,
            )
        return clamped
    return _integer("nonweight_qp", value, low, high)


def resolve_num_threads(num_threads: object) -> int:
    """Validated thread count; 0 becomes the number of cores this process may use."""
    count = _integer("num_threads", num_threads, 0, MAX_THREADS)
    if count == 0:
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            count = os.cpu_count() or 1
    return count


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} = {value} is outside the range {low}..{high}")
    return value


def _boolean(name: str, value: object) -> bool:
    if isinstance(value, bool) or (
        isinstance(value, numbers.Integral) and int(value) in (0, 1)
    ):
        return bool(value)
    if type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def _real(name: str, value: object, low: float, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        if high is None:
            raise ValueError(f"{name} = {value} must be finite and >= {low}")
        raise ValueError(f"{name} = {value} is outside the range {low}..{high}")
    return value
