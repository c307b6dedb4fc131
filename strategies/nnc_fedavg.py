"""NNCFedAvg: FedAvg with NNC-coded downlink and uplink, a drop-in replacement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import FedAvg

from .nnc_strategy import NNCCodingMixin, split_codec_kwargs
from .server_codec import NNCServerCodec


class NNCFedAvg(NNCCodingMixin, FedAvg):
    """FedAvg whose model traffic is coded with NNC (ISO/IEC 15938-17).

    Takes every FedAvg argument, positional or keyword, plus the codec options
    of NNCOptions as keywords (``qp``, ``diff_qp``, ``sparsity``, ``tca``, ...),
    ``nnc_options`` (an NNCOptions), ``results_dir`` (folder for
    ``history.json``) and ``catchup_bytes_limit`` (bytes of past downlink
    segments kept for catching nodes up; default: one keyframe's size).
    Nodes need ``flwr_nncodec.nnc_mod`` in their ClientApp. The coding lives in
    NNCServerCodec and the routing in NNCCodingMixin, both shared with
    NNCStrategy.
    """

    def __init__(
        self,
        *args: Any,
        results_dir: str | Path | None = None,
        catchup_bytes_limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        options, fedavg_kwargs = split_codec_kwargs(dict(kwargs))
        super().__init__(*args, **fedavg_kwargs)
        self.codec = NNCServerCodec(options, results_dir, catchup_bytes_limit)
