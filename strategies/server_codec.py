"""Server end of the NNC links: the downlink broadcast chain, per-node link
state, decoding of replies, and traffic accounting.

Downlink. The server keeps one chain of versions for all nodes. Version v is
the reconstruction R_v = R_{v-1} + dec(enc(G_v - R_{v-1})) of the global model
G_v (closed loop: R_v is exactly what every in-sync node holds, and the next
difference carries what R_v still misses). Version 0 is the all-zero model with
an empty TCA base, which is also the state of a node that never took part or
lost its state. Version 1, the whole first model, is coded with ``qp``, the
differences after it with ``diff_qp``. Each version is coded once; the
chain keeps the latest segments, so a node that holds version u receives the
segments u+1..v in one payload. A node whose version is unknown (new, or
reported out of step) gets the chain from 0, or, once the older segments are
pruned, a keyframe: R_v as plain float32 arrays plus the chain's TCA base.
Either way the message carries the manifest and the codec options again.

Uplink. Each node codes the difference between its trained model and R_v
against its own TCA base; the server holds a copy of that base per node, with
a sequence number. Each downlink message announces the sequence number the
server holds; a node whose own number differs restarts its uplink base from
empty (sequence 0), which the server also accepts.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from flwr_nncodec import flower_link as link
from flwr_nncodec.flower_options import NNCOptions, coarse_qp_warnings

from .traffic import RoundTraffic, config_bytes, metric_entries, write_history

# Error code of a reply the server could not decode ("NN").
DECODE_ERROR_CODE = 0x4E4E


@dataclass
class NodeLink:
    """What the server knows about one node's two links."""

    version: int | None = None  # chain version the node holds; None = unknown
    up_seq: int = 0  # uplink updates coded on the node's current TCA base
    up_base_id: int = 0  # the node's random id of that base (link.up_tag)
    up_base: Any | None = None
    resyncing: bool = False  # reported out of step; cleared once it confirms
    options_sent: NNCOptions | None = None  # codec options the node was told


class NNCServerCodec:
    """Codes the messages a strategy sends and decodes the replies it gets.

    Strategies call ``encode_messages`` on what their ``configure_*`` built and
    ``decode_replies`` before their ``aggregate_*``; everything else (sampling,
    aggregation, Result) stays the strategy's.
    """

    def __init__(
        self,
        options: NNCOptions,
        results_dir: str | Path | None = None,
        catchup_bytes_limit: int | None = None,
    ) -> None:
        self.options = options
        for line in coarse_qp_warnings(options, ("qp", "diff_qp")):
            log(WARNING, "nnc: %s", line)
        self.results_dir = Path(results_dir) if results_dir else None
        self.catchup_bytes_limit = catchup_bytes_limit
        self.chain_id = secrets.randbelow(2**31 - 1) + 1
        self.version = 0
        self.manifest: link.Manifest | None = None
        self.reference: dict[str, np.ndarray] | None = None
        self.target: dict[str, np.ndarray] | None = None
        self.down_base: Any | None = None
        self.segments: dict[int, bytes] = {}
        self.plains: dict[int, dict[str, np.ndarray]] = {}  # uncoded, per version
        self.nodes: dict[int, NodeLink] = {}
        self.rounds: dict[int, RoundTraffic] = {}

    # -- downlink -----------------------------------------------------------

    def encode_messages(
        self,
        server_round: int,
        phase: str,
        arrays: ArrayRecord,
        messages: Iterable[Message],
        arrayrecord_key: str,
        configrecord_key: str,
    ) -> list[Message]:
        """Give each message its own content: the node's payload and link config."""
        messages = list(messages)
        if not messages:
            return messages
        arrays = _broadcast_model(messages, arrayrecord_key, arrays)
        self._advance_chain(arrays)
        traffic = self._round(server_round).phase(phase)

        for message in messages:
            node_id = message.metadata.dst_node_id
            payload, entries, resync = self._payload_for(node_id, arrays)
            entries = self._with_options(self.nodes[node_id], entries)
            content = message.content
            config = ConfigRecord(dict(content.get(configrecord_key, ConfigRecord())))
            config.update(entries)

            records = {
                k: v
                for k, v in content.items()
                if k not in (arrayrecord_key, configrecord_key)
            }
            records[arrayrecord_key] = payload
            records[configrecord_key] = config
            message.content = RecordDict(records)

            traffic.bytes_down += link.payload_bytes(payload)
            traffic.config_bytes_down += config_bytes(entries)
            traffic.messages_down += 1
            traffic.resyncs += int(resync)
        return messages

    def _advance_chain(self, arrays: ArrayRecord) -> None:
        # Code a new chain version when the global model changed.
        model = link.record_to_arrays(arrays)
        manifest = link.manifest_of(model)
        if self.manifest is not None and set(manifest) == set(self.manifest):
            manifest = self.manifest  # same tensors in another order
        if manifest != self.manifest:
            self._restart_chain(manifest)
        target = link.to_reference(model, manifest)
        if self.options.compress_downstream:
            _check_finite_global(target, manifest)
        if self.target is not None and _same_model(target, self.target):
            return

        assert self.reference is not None
        options = self.options
        if not options.compress_downstream:
            self.reference = target
        elif options.compress_differences:
            difference = {k: target[k] - self.reference[k] for k in target}
            if self.version == 0:
                # The first version, a difference to the zero model, is the
                # whole model: it is coded with ``qp``, later ones with diff_qp.
                options = options.with_overrides(diff_qp=options.qp)
            bitstream, reconstruction, plain = link.encode_update(
                difference,
                manifest,
                options,
                base=self.down_base,
                device_id=link.DOWNLINK_DEVICE_ID,
                sparsify=self.version > 0,
            )
            self.reference = {k: self.reference[k] + reconstruction[k] for k in target}
            self.segments[self.version + 1] = bitstream
            self.plains[self.version + 1] = plain
        else:
            bitstream, reconstruction, plain = link.encode_update(
                target,
                manifest,
                options,
                base=None,
                device_id=link.DOWNLINK_DEVICE_ID,
                sparsify=False,
            )
            self.reference = reconstruction
            self.segments = {self.version + 1: bitstream}
            self.plains = {self.version + 1: plain}

        self.version += 1
        self.target = target
        self._prune_segments()

    def _restart_chain(self, manifest: link.Manifest) -> None:
        if self.manifest is not None:
            log(
                WARNING,
                "nnc: model layout changed; restarting every link from version 0",
            )
        self.manifest = manifest
        self.reference = link.zero_reference(manifest)
        self.target = None
        self.down_base = (
            link.new_base_state(link.DOWNLINK_DEVICE_ID)
            if self.options.tca_active
            else None
        )
        self.segments = {}
        self.plains = {}
        self.nodes = {}
        self.chain_id = secrets.randbelow(2**31 - 1) + 1
        self.version = 0

    def _keyframe_bytes(self) -> int:
        assert self.manifest is not None
        num_parameters = link.count_parameters(self.manifest)
        return 4 * num_parameters * (2 if self.down_base is not None else 1)

    def _prune_segments(self) -> None:
        # Keep the newest segments while catching up is cheaper than a keyframe.
        limit = self.catchup_bytes_limit
        limit = self._keyframe_bytes() if limit is None else limit
        kept, total = {}, 0
        for version in sorted(self.segments, reverse=True):
            total += len(self.segments[version])
            if total > limit and kept:
                break
            kept[version] = self.segments[version]
        self.segments = dict(sorted(kept.items()))
        self.plains = {v: self.plains.get(v, {}) for v in self.segments}

    def _payload_for(
        self, node_id: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, dict[str, Any], bool]:
        node = self.nodes.setdefault(node_id, NodeLink())
        assert self.manifest is not None and self.reference is not None
        entries: dict[str, Any] = {}
        entries[link.KEY_CHAIN] = self.chain_id
        entries[link.KEY_VERSION] = self.version
        entries[link.KEY_UP_SEQ] = (
            link.up_tag(node.up_base_id, node.up_seq) if node.up_base is not None else 0
        )
        manifest_json = link.manifest_to_json(self.manifest)

        if not self.options.compress_downstream:
            entries.update({link.KEY_KIND: link.KIND_FULL, link.KEY_FROM_VERSION: 0})
            entries[link.KEY_MANIFEST] = manifest_json
            return arrays, entries, False

        start = self._catchup_start(node.version)
        if start is None:
            # Keyframe: the reference as float32 arrays, and the chain's TCA base.
            keyframe = dict(self.reference)
            if self.down_base is not None:
                keyframe.update(link.base_state_to_arrays(self.down_base))
            record = link.arrays_to_record(keyframe)
            entries.update({link.KEY_KIND: link.KIND_FULL, link.KEY_FROM_VERSION: 0})
            entries[link.KEY_MANIFEST] = manifest_json
            return record, entries, node.resyncing

        if self.options.compress_differences:
            versions = range(start + 1, self.version + 1)
            kind = link.KIND_DELTA
        else:
            # Each segment codes a whole model: only the newest one is needed.
            up_to_date = start == self.version
            versions = range(0) if up_to_date else range(self.version, self.version + 1)
            kind = link.KIND_DELTA if up_to_date else link.KIND_INTRA
        payload, lengths, crc32 = link.payload_record(
            [self.segments[v] for v in versions],
            [self.plains.get(v, {}) for v in versions],
        )
        entries.update(
            {
                link.KEY_KIND: kind,
                link.KEY_FROM_VERSION: start,
                link.KEY_SEGMENTS: lengths,
                link.KEY_CRC32: crc32,
            }
        )
        if start == 0 or kind == link.KIND_INTRA:
            entries[link.KEY_MANIFEST] = manifest_json
        return payload, entries, node.resyncing

    def _with_options(self, node: NodeLink, entries: dict[str, Any]) -> dict[str, Any]:
        # The codec options travel with the manifest (the node stores both)
        # and whenever they changed since this node last got them; a node
        # that lost them reports out of step and is sent both again.
        if link.KEY_MANIFEST in entries or node.options_sent != self.options:
            entries.update(self.options.to_config())
            node.options_sent = self.options
        return entries

    def _catchup_start(self, node_version: int | None) -> int | None:
        """First version of a segment run that brings the node up to date.

        Returns the node's own version when it can be caught up, 0 for a reset
        replay of the whole chain, or None when only a keyframe will do.
        """
        if not self.options.compress_differences:
            return node_version if node_version == self.version else 0
        candidates = [node_version] if node_version is not None else []
        candidates.append(0)
        limit = self._keyframe_bytes()
        for start in candidates:
            needed = range(start + 1, self.version + 1)
            if all(v in self.segments for v in needed):
                if sum(len(self.segments[v]) for v in needed) <= limit:
                    return start
        return None

    # -- uplink -------------------------------------------------------------

    def decode_replies(
        self, server_round: int, phase: str, replies: Iterable[Message]
    ) -> list[Message]:
        """Turn coded replies into plain ones; a reply that fails becomes an error."""
        traffic = self._round(server_round).phase(phase)
        decoded = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            node = self.nodes.setdefault(node_id, NodeLink())
            if reply.has_error():
                if reply.error.code == link.RESYNC_ERROR_CODE:
                    log(
                        WARNING,
                        "nnc: node %d is out of step, resyncing it: %s",
                        node_id,
                        reply.error.reason,
                    )
                    self._forget_node(node)
                decoded.append(reply)
                continue

            try:
                decoded.append(self._decode_reply(reply, node, phase, traffic))
            except Exception as err:  # pylint: disable=broad-exception-caught
                # Whatever a node sends, a bad reply costs that reply, not the run.
                traffic.decode_failures += 1
                node.up_base, node.up_seq, node.up_base_id = None, 0, 0
                reason = f"nnc: {phase} reply of node {node_id} dropped: {err}"
                log(WARNING, "%s", reason)
                error = Error(code=DECODE_ERROR_CODE, reason=reason)
                decoded.append(Message(metadata=reply.metadata, error=error))
        return decoded

    def _forget_node(self, node: NodeLink) -> None:
        node.version, node.up_seq, node.up_base = None, 0, None
        node.up_base_id = 0
        node.resyncing = True  # its next message carries manifest and options

    def _decode_reply(
        self, reply: Message, node: NodeLink, phase: str, traffic: Any
    ) -> Message:
        content = reply.content
        array_keys = [k for k, v in content.items() if isinstance(v, ArrayRecord)]
        link_record = content.get(link.LINK_RECORD_KEY)
        if link_record is None:
            # A node without the mod replies with plain weights: checked like
            # decoded ones, then passed on.
            if phase == "train" and array_keys:
                traffic.bytes_up += link.payload_bytes(content[array_keys[0]])
                traffic.models_up += 1
                self._check_plain_model(content, array_keys)
            return reply
        if not isinstance(link_record, ConfigRecord):
            raise link.LinkError(f"{link.LINK_RECORD_KEY} is not a ConfigRecord")

        chain_id = link_record.get(link.KEY_CHAIN)
        version = link_record.get(link.KEY_VERSION)
        if chain_id != self.chain_id:
            raise link.LinkError(
                f"reply belongs to chain {chain_id!r}, not {self.chain_id}"
            )
        if type(version) is not int or not 0 <= version <= self.version:
            raise link.LinkError(
                f"reply reports version {version!r}, chain is at {self.version}"
            )
        node.version, node.resyncing = version, False
        traffic.config_bytes_up += config_bytes(link_record)

        records = {k: v for k, v in content.items() if k != link.LINK_RECORD_KEY}
        if phase == "train":
            if len(array_keys) != 1:
                raise link.LinkError(f"expected one ArrayRecord, got {len(array_keys)}")
            key = array_keys[0]
            traffic.bytes_up += link.payload_bytes(records[key])
            traffic.models_up += 1
            kind = link_record.get(link.KEY_KIND)
            if kind in (link.KIND_DELTA, link.KIND_INTRA):
                model = self._decode_uplink(node, records[key], link_record, kind)
                assert self.manifest is not None
                records[key] = link.from_reference(model, self.manifest)
            elif kind == link.KIND_FULL:
                self._check_plain_model(records, [key])
            else:
                raise link.LinkError(f"{link.KEY_KIND}={kind!r} is not an uplink kind")
        return Message(metadata=reply.metadata, content=RecordDict(records))

    def _check_plain_model(self, records: Any, array_keys: list[str]) -> None:
        """Raise LinkError unless each plain ArrayRecord holds exactly the model's
        tensors, in its shapes and dtypes, with finite float values."""
        assert self.manifest is not None
        for key in array_keys:
            record = records[key]
            arrays = link.record_to_arrays(record)
            link.check_plain_model(arrays, self.manifest, f"reply record {key!r}")

    def _decode_uplink(
        self, node: NodeLink, record: ArrayRecord, link_record: ConfigRecord, kind: str
    ) -> dict[str, np.ndarray]:
        assert self.manifest is not None and self.reference is not None
        if link_record.get(link.KEY_VERSION) != self.version:
            raise link.LinkError(
                f"reply codes against version {link_record.get(link.KEY_VERSION)}, "
                f"the chain is at {self.version}"
            )
        segments, plains = link.unpack_payload(
            record,
            link_record.get(link.KEY_SEGMENTS),
            link_record.get(link.KEY_CRC32),
            expected=1,
        )

        # The uplink TCA base: a fresh one (update #0), or the one this node's
        # last decoded reply left here, named by the same (id, count) tag.
        differential = kind == link.KIND_DELTA
        use_tca = differential and self.options.tca_active
        base_id, seq = 0, 0
        if use_tca:
            base_id, seq = link.split_up_tag(link_record.get(link.KEY_UP_SEQ))
        held_tag = (node.up_base_id, node.up_seq) if node.up_base is not None else None
        if not use_tca:
            base = None
        elif seq == 0:
            base = link.new_base_state(link.UPLINK_DEVICE_ID)
        elif (base_id, seq) == held_tag:
            base = link.copy_base_state(node.up_base)
        else:
            raise link.LinkError(
                f"reply codes on uplink base {base_id:#x} #{seq}, the server holds "
                f"base {node.up_base_id:#x} #{node.up_seq}"
            )

        update = link.decode_update(
            segments[0], self.manifest, base=base, plain=plains[0]
        )
        node.up_base = base
        node.up_seq = seq + 1 if base is not None else 0
        node.up_base_id = base_id if base is not None else 0
        if not differential:
            return update
        # With error accumulation the update lands on the server's own model
        # (the target), so the next downlink difference also carries what
        # this version's coding dropped; on the reference it would be lost.
        origin = self.target if self.options.err_accumulation else self.reference
        if origin is None:
            origin = self.reference
        return {k: origin[k] + update[k] for k in update}

    # -- accounting ---------------------------------------------------------

    def _round(self, server_round: int) -> RoundTraffic:
        if server_round not in self.rounds:
            num_parameters = (
                link.count_parameters(self.manifest) if self.manifest else 0
            )
            self.rounds[server_round] = RoundTraffic(server_round, num_parameters)
        return self.rounds[server_round]

    def finish_phase(
        self, server_round: int, phase: str, metrics: MetricRecord | None
    ) -> MetricRecord | None:
        """Log the phase's traffic, add it to the metrics, and rewrite history.json."""
        traffic = self._round(server_round)
        if traffic.num_parameters == 0 and self.manifest is not None:
            traffic.num_parameters = link.count_parameters(self.manifest)
        figures = traffic.summary(traffic.phase(phase))
        if figures["messages_down"] or figures["models_up"]:
            log(
                INFO,
                "nnc: %s round %d: down %d B to %d nodes, up %d B from %d nodes "
                "(float32 %d B, ratio %.1f; %.3f / %.3f bits per parameter down / up)",
                phase,
                server_round,
                figures["bytes_down"],
                figures["messages_down"],
                figures["bytes_up"],
                figures["models_up"],
                figures["bytes_float32"],
                figures["ratio"],
                figures["bits_per_param_down"],
                figures["bits_per_param_up"],
            )
            entries = metric_entries(figures)
            if phase == "evaluate":
                round_figures = traffic.summary()
                entries.update(
                    {
                        "nnc-round-" + key.replace("_", "-"): round_figures[key]
                        for key in ("bytes_down", "bytes_up", "bytes_float32", "ratio")
                    }
                )
            metrics = MetricRecord() if metrics is None else metrics
            metrics.update(entries)

        if phase == "evaluate":
            totals = traffic.summary()
            log(
                INFO,
                "nnc: round %d total: %d B down + %d B up = %d B vs %d B float32 "
                "(ratio %.1f; %.1f with %d B of nnc.* config entries)",
                server_round,
                totals["bytes_down"],
                totals["bytes_up"],
                totals["bytes_down"] + totals["bytes_up"],
                totals["bytes_float32"],
                totals["ratio"],
                totals["ratio_with_config"],
                totals["config_bytes_down"] + totals["config_bytes_up"],
            )
        self._write_history()
        return metrics

    def history(self) -> dict[str, Any]:
        """Per-round traffic and run totals, as written to history.json."""
        rounds = [self.rounds[r].to_json() for r in sorted(self.rounds)]
        totals: dict[str, int | float] = {}
        for key in (
            "bytes_down",
            "bytes_up",
            "bytes_float32",
            "resyncs",
            "decode_failures",
            "config_bytes_down",
            "config_bytes_up",
        ):
            totals[key] = sum(entry[key] for entry in rounds)
        coded = totals["bytes_down"] + totals["bytes_up"]
        totals["ratio"] = totals["bytes_float32"] / coded if coded else 0.0
        coded += totals["config_bytes_down"] + totals["config_bytes_up"]
        totals["ratio_with_config"] = totals["bytes_float32"] / coded if coded else 0.0
        return {
            "format": "flwr-nncodec-history/1",
            "options": self.options.to_config(),
            "num_parameters": link.count_parameters(self.manifest)
            if self.manifest
            else 0,
            "chain_version": self.version,
            "rounds": rounds,
            "totals": totals,
        }

    def _write_history(self) -> None:
        if self.results_dir is not None:
            write_history(self.results_dir / "history.json", self.history())

    def summary_lines(self) -> list[str]:
        o = self.options
        links = [
            n
            for n, on in (("down", o.compress_downstream), ("up", o.compress_upstream))
            if on
        ]
        return [
            f"NNC (ISO/IEC 15938-17) coding: {' + '.join(links) or 'off'}link",
            f"diff_qp {o.diff_qp} | qp {o.qp} | nonweight_qp {o.nonweight_qp} "
            f"| dq {o.use_dq}",
            f"sparsity {o.sparsity} | struct_spars_factor {o.struct_spars_factor} "
            f"| row_skipping {o.row_skipping}",
            f"differences {o.compress_differences} | TCA {o.tca_active} "
            f"| err_accumulation {o.err_accumulation}",
        ]


def _broadcast_model(
    messages: list[Message], arrayrecord_key: str, arrays: ArrayRecord
) -> ArrayRecord:
    # The model the strategy actually sends; the chain needs one for all nodes.
    records = [m.content.get(arrayrecord_key) for m in messages]
    first = records[0] if isinstance(records[0], ArrayRecord) else arrays
    for record in records[1:]:
        if record is not first and not _same_model(
            link.record_to_arrays(record), link.record_to_arrays(first)
        ):
            raise ValueError(
                "NNC links send one model to all nodes, but the strategy built "
                f"different '{arrayrecord_key}' records per node"
            )
    return first


def _same_model(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _check_finite_global(target: dict[str, np.ndarray], manifest: Any) -> None:
    # NNC codes finite values only; name the tensor rather than fail in the codec.
    for spec in manifest:
        if spec.is_float and not np.all(np.isfinite(target[spec.name])):
            num_bad = int(np.count_nonzero(~np.isfinite(target[spec.name])))
            raise ValueError(
                f"nnc: the global model's tensor {spec.name!r} holds {num_bad} "
                "non-finite values (NaN or inf); the strategy's aggregation "
                "diverged and the model cannot be NNC-coded"
            )
