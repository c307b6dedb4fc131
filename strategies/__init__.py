"""Message-API strategies that NNC-code model updates (installed as
flwr_nncodec.strategies)."""

from .nnc_fedavg import NNCFedAvg
from .nnc_strategy import NNCCodingMixin, NNCStrategy
from .server_codec import NNCServerCodec
from .traffic import PhaseTraffic, RoundTraffic

__all__ = [
    "NNCCodingMixin",
    "NNCFedAvg",
    "NNCServerCodec",
    "NNCStrategy",
    "PhaseTraffic",
    "RoundTraffic",
]
