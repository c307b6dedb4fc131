"""Incremental-coding base: what NNCodec calls ``approx_param_base``.

One :class:`BaseState` belongs to one link (one sender and one receiver). It
holds, per tensor name, the integer reconstruction indices q of the last
update coded on that link (the TCA context base, nnc-format §3.8), the
``put_node_depth`` and ``parameter_id`` signalled for it, and the link's
``device_id``. Encoder and decoder must advance identical copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BaseState"]

_Q_PREFIX = "q/"
_DEPTH_PREFIX = "depth/"
_PARAMETER_ID_PREFIX = "pid/"
_DEVICE_ID_KEY = "device_id"
_MAX_ID = (1 << 31) - 1


@dataclass(eq=False)
class BaseState:
    """Base of an incremental (differential, TCA) NNC link.

    Parameters
    ----------
    device_id : int
        Device id recorded for the link; 0 until the first update sets it.
    parameters : dict[str, np.ndarray]
        Tensor name -> int32 array of reconstruction indices q.
    put_node_depth : dict[str, int]
        Tensor name -> depth of the last update in the NNR update tree.
    parameter_id : dict[str, int]
        Tensor name -> parameter_id signalled for that tensor.

    Notes
    -----
    ``to_arrays``/``from_arrays`` give a pickle-free form made only of
    integer numpy arrays, e.g. for a Flower ``ArrayRecord``.
    """

    device_id: int = 0
    parameters: dict[str, np.ndarray] = field(default_factory=dict)
    put_node_depth: dict[str, int] = field(default_factory=dict)
    parameter_id: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Validate on construction: names are str, q arrays hold integers that
        # fit int32 (stored as int32), depths and ids are non-negative ints.
        self.device_id = _checked_id("device_id", self.device_id)
        for label, mapping in (
            ("parameters", self.parameters),
            ("put_node_depth", self.put_node_depth),
            ("parameter_id", self.parameter_id),
        ):
            if not isinstance(mapping, dict):
                raise TypeError(
                    f"BaseState.{label} must be a dict, got {type(mapping).__name__}"
                )
            for name in mapping:
                if not isinstance(name, str):
                    raise TypeError(
                        f"BaseState.{label}: tensor names must be str, got {name!r}"
                    )
        self.parameters = {
            name: _int32_levels(f"parameters[{name!r}]", q)
            for name, q in self.parameters.items()
        }
        self.put_node_depth = {
            name: _checked_id(f"put_node_depth[{name!r}]", depth)
            for name, depth in self.put_node_depth.items()
        }
        self.parameter_id = {
            name: _checked_id(f"parameter_id[{name!r}]", pid)
            for name, pid in self.parameter_id.items()
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseState):
            return NotImplemented
        return (
            self.device_id == other.device_id
            and self.put_node_depth == other.put_node_depth
            and self.parameter_id == other.parameter_id
            and self.parameters.keys() == other.parameters.keys()
            and all(
                np.array_equal(q, other.parameters[name])
                for name, q in self.parameters.items()
            )
        )

    def copy(self) -> BaseState:
        """Deep copy (arrays included)."""
        return BaseState(
            device_id=self.device_id,
            parameters={k: v.copy() for k, v in self.parameters.items()},
            put_node_depth=dict(self.put_node_depth),
            parameter_id=dict(self.parameter_id),
        )

    def advance(
        self, name: str, q: np.ndarray, device_id: int, parameter_id: int
    ) -> None:
        """Record one coded or decoded update of tensor ``name``.

        Mirrors NNCodec's ``update_base_param``: the depth grows by one (the
        first update gets depth 1), the device id is set on first use, and a
        device or parameter id that contradicts the base is an error.
        """
        if self.device_id and self.device_id != device_id:
            raise ValueError(
                f"tensor {name!r}: update from device_id {device_id} does not "
                f"match the base's device_id {self.device_id}"
            )
        known_id = self.parameter_id.get(name)
        if known_id is not None and known_id != parameter_id:
            raise ValueError(
                f"tensor {name!r}: parameter_id {parameter_id} does not match "
                f"the base's parameter_id {known_id}"
            )
        if not self.device_id:
            self.device_id = int(device_id)
        self.parameter_id[name] = int(parameter_id)
        self.put_node_depth[name] = self.put_node_depth.get(name, 0) + 1
        self.parameters[name] = np.array(q, dtype=np.int32, copy=True)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flatten to ``{key: integer ndarray}`` without pickling.

        Keys are ``"device_id"``, ``"q/<name>"``, ``"depth/<name>"`` and
        ``"pid/<name>"``.
        """
        arrays = {_DEVICE_ID_KEY: np.array([self.device_id], dtype=np.int64)}
        for name, q in self.parameters.items():
            arrays[_Q_PREFIX + name] = np.array(q, dtype=np.int32, copy=True)
        for name, depth in self.put_node_depth.items():
            arrays[_DEPTH_PREFIX + name] = np.array([depth], dtype=np.int64)
        for name, parameter_id in self.parameter_id.items():
            arrays[_PARAMETER_ID_PREFIX + name] = np.array(
                [parameter_id], dtype=np.int64
            )
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BaseState:
        """Inverse of :meth:`to_arrays`; validates every key, dtype and value."""
        state = cls()
        for key, value in arrays.items():
            if not isinstance(key, str):
                raise TypeError(f"base entry keys must be str, got {key!r}")
            array = np.asarray(value)
            if key == _DEVICE_ID_KEY:
                state.device_id = _scalar_id(key, array)
            elif key.startswith(_Q_PREFIX):
                if array.dtype.kind not in "iu":
                    raise ValueError(
                        f"base entry {key!r} has dtype {array.dtype}, expected int32"
                    )
                if array.size and (array.min() < -(1 << 31) or array.max() > _MAX_ID):
                    raise ValueError(f"base entry {key!r} has values outside int32")
                state.parameters[key[len(_Q_PREFIX) :]] = array.astype(np.int32)
            elif key.startswith(_DEPTH_PREFIX):
                state.put_node_depth[key[len(_DEPTH_PREFIX) :]] = _scalar_id(key, array)
            elif key.startswith(_PARAMETER_ID_PREFIX):
                name = key[len(_PARAMETER_ID_PREFIX) :]
                state.parameter_id[name] = _scalar_id(key, array)
            else:
                raise ValueError(f"unknown base entry {key!r}")
        return state

    @classmethod
    def from_nncodec(cls, approx_param_base: dict) -> BaseState:
        """Build from NNCodec's ``approx_param_base`` dict layout."""
        return cls(
            device_id=int(approx_param_base.get("device_id", 0) or 0),
            parameters={
                name: np.asarray(q, dtype=np.int32).copy()
                for name, q in approx_param_base.get("parameters", {}).items()
            },
            put_node_depth={
                k: int(v)
                for k, v in approx_param_base.get("put_node_depth", {}).items()
            },
            parameter_id={
                k: int(v) for k, v in approx_param_base.get("parameter_id", {}).items()
            },
        )

    def to_nncodec(self) -> dict:
        """NNCodec's ``approx_param_base`` layout (copies)."""
        return {
            "parameters": {k: v.copy() for k, v in self.parameters.items()},
            "put_node_depth": dict(self.put_node_depth),
            "device_id": self.device_id,
            "parameter_id": dict(self.parameter_id),
        }


def _scalar_id(key: str, array: np.ndarray) -> int:
    if array.dtype.kind not in "iu" or array.size != 1:
        raise ValueError(
            f"base entry {key!r} must be one integer, got dtype {array.dtype} "
            f"shape {array.shape}"
        )
    value = int(array.reshape(-1)[0])
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"base entry {key!r} = {value} outside 0..{_MAX_ID}")
    return value


def _int32_levels(label: str, q: object) -> np.ndarray:
    """``q`` as an int32 array; ValueError unless it holds int32 integers."""
    array = np.asarray(q)
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"BaseState.{label} has dtype {array.dtype}; base levels must be "
            "integers (int32)"
        )
    if array.dtype != np.int32 and array.size and (
        int(array.min()) < -(1 << 31) or int(array.max()) > _MAX_ID
    ):
        raise ValueError(f"BaseState.{label} has values outside int32")
    return array if array.dtype == np.int32 else array.astype(np.int32)


def _checked_id(label: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"BaseState.{label} must be an int, got {value!r}")
    if not 0 <= int(value) <= _MAX_ID:
        raise ValueError(f"BaseState.{label} = {value} outside 0..{_MAX_ID}")
    return int(value)
