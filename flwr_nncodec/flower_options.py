"""Codec options of the Flower layer and their ``nnc.*`` ConfigRecord form.

The names follow NNCodec's federated-learning pipeline (``nncodec/fl.py``) and
its defaults (nnc-format.md §5.1), with one deliberate change: ``row_skipping``
defaults to True, because structured sparsification (``struct_spars_factor``)
zeroes whole rows of each update and row skipping then codes each of them with a
single flag instead of one zero level per element.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from flwr_nncodec.hls import MAX_SCAN_ORDER
from flwr_nncodec.options import MAX_LAMBDA_SCALE

# Prefix of every key the plugin adds to a message's ConfigRecord.
CONFIG_PREFIX = "nnc."

# NNC stores qp in a signed 8-bit field (nnc-format §5.5: larger values wrap).
QP_MIN, QP_MAX = -128, 127


@dataclass(frozen=True)
class NNCOptions:
    """What the NNC links code and how (one value for both directions).

    Parameters
    ----------
    qp : int (default: -26)
        Quantisation parameter of full (non-differential) models, and the step
        that sparsification measures weights against, as in fl.py.
    diff_qp : int (default: -26)
        Quantisation parameter of coded differences (``compress_differences``).
    nonweight_qp : int (default: -75)
        Quantisation parameter of 1-D tensors (biases, norms).
    use_dq : bool (default: False)
        Dependent (trellis-coded) quantisation.
    param_opt : bool (default: True)
        NNC's parameter optimisation of the CABAC contexts.
    lambda_scale : float (default: 0.5)
        Strength of rate-aware quantisation (RDOQ / rate-aware trellis);
        0 picks levels by squared error alone, as NNCodec does.
    row_skipping : bool (default: True)
        Code all-zero rows of 2-D tensors with one flag each.
    sparsity : float (default: 0.6)
        Target share of zeros in each coded update (unstructured), in [0, 1).
    struct_spars_factor : float (default: 0.9)
        Gain of structured (per output channel) sparsification; 0 turns it off.
    tca : bool (default: True)
        Temporal context adaptation: code each link's update with the previous
        update's integer levels as context (needs ``compress_differences``).
    err_accumulation : bool (default: True)
        Error feedback on the uplink: a node adds what its previous update lost
        to quantisation and sparsification to the next one. The downlink is
        closed-loop, which carries its residual by construction.
    compress_upstream : bool (default: True)
        Code node-to-server updates; False sends plain float weights.
    compress_downstream : bool (default: True)
        Code server-to-node models; False sends plain float weights.
    compress_differences : bool (default: True)
        Code differences to the reference each end holds; False codes each
        model on its own (with ``qp``), without TCA or error feedback.
    scan_order : int (default: 0)
        0: NNCodec's raster scan. 1..4: float matrices in blocks of
        4 << scan_order with CABAC entry points, so that one large tensor is
        coded and decoded on several cores; it costs bytes (README, "Options").
        Worth it for models with tensors of millions of parameters.
    """

    qp: int = -26
    diff_qp: int = -26
    nonweight_qp: int = -75
    use_dq: bool = False
    param_opt: bool = True
    lambda_scale: float = 0.5
    row_skipping: bool = True
    sparsity: float = 0.6
    struct_spars_factor: float = 0.9
    tca: bool = True
    err_accumulation: bool = True
    compress_upstream: bool = True
    compress_downstream: bool = True
    compress_differences: bool = True
    scan_order: int = 0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            _check_type(field.name, value, _FIELD_TYPES[field.name])

        for name in ("qp", "diff_qp", "nonweight_qp"):
            value = getattr(self, name)
            if not QP_MIN <= value <= QP_MAX:
                raise ValueError(
                    f"NNCOptions.{name} must lie in [{QP_MIN}, {QP_MAX}], got {value}"
                )

        if not 0.0 <= self.lambda_scale <= MAX_LAMBDA_SCALE:
            raise ValueError(
                f"NNCOptions.lambda_scale must lie in [0, {MAX_LAMBDA_SCALE:g}], "
                f"got {self.lambda_scale}"
            )
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(
                f"NNCOptions.sparsity must lie in [0, 1), got {self.sparsity}"
            )
        if not 0.0 <= self.struct_spars_factor <= 1.0:
            raise ValueError(
                "NNCOptions.struct_spars_factor must lie in [0, 1], "
                f"got {self.struct_spars_factor}"
            )
        if not 0 <= self.scan_order <= MAX_SCAN_ORDER:
            raise ValueError(
                f"NNCOptions.scan_order must lie in [0, {MAX_SCAN_ORDER}], "
                f"got {self.scan_order}"
            )

    @property
    def tca_active(self) -> bool:
        """TCA needs parent signalling, i.e. differential coding."""
        return self.tca and self.compress_differences

    @property
    def coding_qp(self) -> int:
        """The qp the coded payload carries for weights."""
        return self.diff_qp if self.compress_differences else self.qp

    def with_overrides(self, **overrides: Any) -> NNCOptions:
        """Return a copy with some options replaced (validated again)."""
        unknown = sorted(set(overrides) - set(_FIELD_TYPES))
        if unknown:
            raise TypeError(f"unknown NNC option(s): {', '.join(unknown)}")
        return replace(self, **overrides)

    def to_config(self) -> dict[str, int | float | bool]:
        """Return the options as ``nnc.<name>`` ConfigRecord entries."""
        return {CONFIG_PREFIX + name: value for name, value in asdict(self).items()}

    @classmethod
    def from_config(cls, config: Any) -> NNCOptions:
        """Read options back from ``nnc.<name>`` entries; missing ones keep defaults.

        Raises ValueError or TypeError naming the key when a value is invalid.
        """
        values: dict[str, Any] = {}
        for name, expected in _FIELD_TYPES.items():
            key = CONFIG_PREFIX + name
            if key not in config:
                continue
            value = config[key]
            if (
                expected is float
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            _check_type(key, value, expected)
            values[name] = value
        return cls(**values)


_FIELD_TYPES: dict[str, type] = {
    "qp": int,
    "diff_qp": int,
    "nonweight_qp": int,
    "use_dq": bool,
    "param_opt": bool,
    "lambda_scale": float,
    "row_skipping": bool,
    "sparsity": float,
    "struct_spars_factor": float,
    "tca": bool,
    "err_accumulation": bool,
    "compress_upstream": bool,
    "compress_downstream": bool,
    "compress_differences": bool,
    "scan_order": int,
}


def _check_type(name: str, value: Any, expected: type) -> None:
    # bool is an int subclass; keep the two apart in both directions.
    if expected is int:
        valid = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        valid = isinstance(value, bool)
    if not valid:
        raise TypeError(
            f"{name} must be {expected.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )


# Weight qps from which the quantiser step (2^16 and up) is so coarse that any
# realistic weight or update quantises to zero.
COARSE_QP_WARN_FROM = 64


def quantizer_step(qp: int, qp_density: int = 2) -> float:
    """NNC's uniform quantiser step: 2^(qp >> k) * (1 + (qp & (2^k - 1)) / 2^k)."""
    mask = (1 << qp_density) - 1
    return 2.0 ** (qp >> qp_density) * (1 + (qp & mask) / (1 << qp_density))


def coarse_qp_warnings(options: NNCOptions, names: tuple[str, ...]) -> list[str]:
    """One line per weight qp in ``names`` so coarse that every update codes to 0."""
    lines = []
    for name in names:
        qp = getattr(options, name)
        if qp >= COARSE_QP_WARN_FROM:
            step = quantizer_step(qp)
            lines.append(
                f"{name}={qp} gives a quantiser step of {step:.3g}: every weight "
                f"or update below {step / 2:.3g} in magnitude quantises to zero, "
                "so the model will not change"
            )
    return lines
