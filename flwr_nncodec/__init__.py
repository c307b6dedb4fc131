"""flwr-nncodec: NNC (ISO/IEC 15938-17) coding of model updates for Flower.

The codec (``encode``/``decode``) imports only numpy; the Flower pieces
(``NNCFedAvg``, ``NNCStrategy``, ``nnc_mod``, ``NNCMod``) are loaded on first
use so that the codec works without Flower installed.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "BaseState": "flwr_nncodec.base_state",
    "EncodeResult": "flwr_nncodec.codec",
    "NNCFedAvg": "flwr_nncodec.strategies",
    "NNCFormatError": "flwr_nncodec.errors",
    "NNCMod": "flwr_nncodec.mod",
    "NNCStrategy": "flwr_nncodec.strategies",
    "decode": "flwr_nncodec.codec",
    "decode_tensor": "flwr_nncodec.codec",
    "encode": "flwr_nncodec.codec",
    "encode_tensor": "flwr_nncodec.codec",
    "encode_with_reconstruction": "flwr_nncodec.codec",
    "inspect": "flwr_nncodec.codec",
    "nnc_mod": "flwr_nncodec.mod",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'flwr_nncodec' has no attribute {name!r}")
    value = getattr(import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
