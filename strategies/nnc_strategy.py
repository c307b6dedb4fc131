"""NNCStrategy: NNC-code the model traffic of any Message-API strategy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flwr_nncodec.flower_options import NNCOptions

from .server_codec import NNCServerCodec

OPTION_NAMES = frozenset(field.name for field in fields(NNCOptions))


def split_codec_kwargs(kwargs: dict[str, Any]) -> tuple[NNCOptions, dict[str, Any]]:
    """Separate NNC options (``qp``, ``diff_qp``, ...) from a strategy's arguments."""
    options = kwargs.pop("nnc_options", None) or NNCOptions()
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTION_NAMES}
    return options.with_overrides(**overrides), kwargs


class NNCCodingMixin:
    """Routes a strategy's own messages through ``self.codec`` (NNCServerCodec).

    Put it before a Message-API strategy class in the bases, as NNCFedAvg does
    with FedAvg; the strategy's methods run via ``super()``.
    """

    codec: NNCServerCodec

    def summary(self) -> None:
        super().summary()  # type: ignore[misc]
        log_codec_summary(self.codec)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(  # type: ignore[misc]
            server_round, arrays, config, grid
        )
        return self.codec.encode_messages(
            server_round, "train", arrays, messages, *_record_keys(self)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = self.codec.decode_replies(server_round, "train", replies)
        arrays, metrics = super().aggregate_train(  # type: ignore[misc]
            server_round, decoded
        )
        return arrays, self.codec.finish_phase(server_round, "train", metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_evaluate(  # type: ignore[misc]
            server_round, arrays, config, grid
        )
        return self.codec.encode_messages(
            server_round, "evaluate", arrays, messages, *_record_keys(self)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        decoded = self.codec.decode_replies(server_round, "evaluate", replies)
        metrics = super().aggregate_evaluate(  # type: ignore[misc]
            server_round, decoded
        )
        return self.codec.finish_phase(server_round, "evaluate", metrics)


class NNCStrategy(Strategy):
    """Wrap a strategy so that every model it sends or receives is NNC-coded.

    The wrapped strategy samples nodes, aggregates and keeps its own state as
    usual; this wrapper replaces the arrays of each outgoing message with that
    node's coded payload and turns each coded reply back into full weights
    before the wrapped strategy aggregates them. Nodes need ``nnc_mod``.

    Parameters
    ----------
    strategy : Strategy
        Any Message-API strategy whose messages carry one ArrayRecord of numpy
        arrays (FedAvg, FedAvgM, FedAdam, FedProx, ...).
    results_dir : str or Path, optional
        Folder for ``history.json`` (traffic per round); None writes nothing.
    nnc_options : NNCOptions, optional
        Codec options; the keyword arguments below override single fields.
    **options
        ``qp``, ``diff_qp``, ``nonweight_qp``, ``use_dq``, ``param_opt``,
        ``lambda_scale``, ``row_skipping``, ``sparsity``,
        ``struct_spars_factor``, ``tca``, ``err_accumulation``,
        ``compress_upstream``, ``compress_downstream``,
        ``compress_differences``, ``scan_order`` (see NNCOptions).
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        results_dir: str | Path | None = None,
        catchup_bytes_limit: int | None = None,
        **options: Any,
    ) -> None:
        nnc_options, unknown = split_codec_kwargs(dict(options))
        if unknown:
            raise TypeError(f"NNCStrategy got unknown argument(s): {sorted(unknown)}")
        self.strategy = strategy
        self.codec = NNCServerCodec(nnc_options, results_dir, catchup_bytes_limit)

    def summary(self) -> None:
        self.strategy.summary()
        log_codec_summary(self.codec)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self.codec.encode_messages(
            server_round, "train", arrays, messages, *_record_keys(self.strategy)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = self.codec.decode_replies(server_round, "train", replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, decoded)
        return arrays, self.codec.finish_phase(server_round, "train", metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return self.codec.encode_messages(
            server_round, "evaluate", arrays, messages, *_record_keys(self.strategy)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        decoded = self.codec.decode_replies(server_round, "evaluate", replies)
        metrics = self.strategy.aggregate_evaluate(server_round, decoded)
        return self.codec.finish_phase(server_round, "evaluate", metrics)


def log_codec_summary(codec: NNCServerCodec) -> None:
    """Append the codec's settings to a strategy's start-up tree."""
    log(INFO, "\t└──> NNC links:")
    lines = codec.summary_lines()
    for index, line in enumerate(lines):
        glyph = "└──" if index == len(lines) - 1 else "├──"
        log(INFO, "\t\t%s %s", glyph, line)


def _record_keys(strategy: Any) -> tuple[str, str]:
    # Strategies derived from FedAvg name their record keys; others use Flower's.
    return (
        str(getattr(strategy, "arrayrecord_key", "arrays")),
        str(getattr(strategy, "configrecord_key", "config")),
    )
