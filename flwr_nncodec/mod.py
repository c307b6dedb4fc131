"""Client half of the NNC links: a Flower mod around the user's ClientApp.

Incoming train/evaluate messages from NNCFedAvg/NNCStrategy carry a coded
payload; the mod decodes it into an ordinary ArrayRecord (the node's reference
model) before the user's ``@app.train`` / ``@app.evaluate`` runs, and codes the
trained weights as a difference to that reference afterwards. Its link state
lives in ``context.state`` as records: no files, no pickle. Messages without
``nnc.*`` config (queries, plain strategies) pass through untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from flwr_nncodec import flower_link as link
from flwr_nncodec.flower_options import (
    CONFIG_PREFIX,
    NNCOptions,
    coarse_qp_warnings,
)

# Keys of the mod's records in context.state.
STATE_META = "nnc.state"
STATE_REFERENCE = "nnc.reference"
STATE_DOWN_BASE = "nnc.down-base"
STATE_UP_BASE = "nnc.up-base"
STATE_RESIDUAL = "nnc.residual"

# The nnc.<option> ConfigRecord keys; the server sends all of them or none.
_OPTION_KEYS = tuple(NNCOptions().to_config())


@dataclass
class NodeLinkState:
    """Everything a node keeps between messages (mirrors the server's view)."""

    chain_id: int = 0
    version: int = 0
    up_seq: int = 0
    up_base_id: int = 0  # random id of up_base (link.up_tag)
    manifest: link.Manifest | None = None
    options: NNCOptions | None = None  # the server's codec options
    reference: dict[str, np.ndarray] | None = None
    down_base: Any | None = None
    up_base: Any | None = None
    residual: dict[str, np.ndarray] | None = None

    @classmethod
    def load(
        cls,
        state: RecordDict,
        max_elements: int = link.DEFAULT_MAX_MODEL_ELEMENTS,
    ) -> NodeLinkState:
        """Read the state back; anything missing or malformed means version 0.

        A residual that does not fit the model (shapes, dtypes, non-finite
        values) is dropped on its own: it only delays error feedback.
        """
        meta = state.get(STATE_META)
        if not isinstance(meta, ConfigRecord):
            return cls()
        try:
            manifest = link.manifest_from_json(meta["manifest"], max_elements)
            loaded = cls(
                chain_id=_int(meta, "chain-id"),
                version=_int(meta, "version"),
                up_seq=_int(meta, "up-seq"),
                # Absent in state an older plugin stored: 0 matches no base.
                up_base_id=_int(meta, "up-base-id") if "up-base-id" in meta else 0,
                manifest=manifest,
                options=_options_from_json(meta["options"]),
                reference=link.to_reference(
                    _arrays_from_state(state, STATE_REFERENCE), manifest
                ),
            )
            if STATE_DOWN_BASE in state:
                loaded.down_base = _base_from_state(state, STATE_DOWN_BASE)
            if STATE_UP_BASE in state:
                loaded.up_base = _base_from_state(state, STATE_UP_BASE)
            if STATE_RESIDUAL in state:
                loaded.residual = _checked_residual(
                    _arrays_from_state(state, STATE_RESIDUAL), manifest
                )
        except (KeyError, TypeError, ValueError) as err:
            log(
                WARNING,
                "nnc_mod: stored link state unusable (%s); starting afresh",
                err,
            )
            return cls()
        return loaded

    def forget(self, chain_id: int) -> None:
        """Drop everything: the node holds version 0 of chain ``chain_id``."""
        self.__dict__.update(NodeLinkState(chain_id=chain_id).__dict__)

    def save(self, state: RecordDict) -> None:
        for key in (
            STATE_META,
            STATE_REFERENCE,
            STATE_DOWN_BASE,
            STATE_UP_BASE,
            STATE_RESIDUAL,
        ):
            if key in state:
                del state[key]
        if self.manifest is None or self.reference is None:
            return
        state[STATE_META] = ConfigRecord(
            {
                "chain-id": self.chain_id,
                "version": self.version,
                "up-seq": self.up_seq,
                "up-base-id": self.up_base_id,
                "manifest": link.manifest_to_json(self.manifest),
                "options": json.dumps(self.options.to_config() if self.options else {}),
            }
        )
        state[STATE_REFERENCE] = link.arrays_to_record(self.reference)
        if self.down_base is not None:
            state[STATE_DOWN_BASE] = link.arrays_to_record(self.down_base.to_arrays())
        if self.up_base is not None:
            state[STATE_UP_BASE] = link.arrays_to_record(self.up_base.to_arrays())
        if self.residual is not None:
            state[STATE_RESIDUAL] = link.arrays_to_record(self.residual)


class NNCMod:
    """Configurable client mod; ``nnc_mod`` is the instance with no overrides.

    Parameters
    ----------
    max_model_elements : int (default: 2**28)
        Largest model (in values, all tensors together) this node accepts
        from a server; a manifest describing more is refused before anything
        is allocated.
    **uplink_overrides
        NNCOptions fields that replace the server's choice for this node's
        uplink only (e.g. ``diff_qp=-20`` on a slow link). Decoding needs no
        options: every stream carries its own qp.
    """

    def __init__(
        self,
        *,
        max_model_elements: int = link.DEFAULT_MAX_MODEL_ELEMENTS,
        **uplink_overrides: Any,
    ) -> None:
        if type(max_model_elements) is not int or max_model_elements < 1:
            raise ValueError(
                "NNCMod max_model_elements must be a positive int, "
                f"got {max_model_elements!r}"
            )
        self.max_model_elements = max_model_elements
        # validates names and values
        options = NNCOptions().with_overrides(**uplink_overrides)
        overridden = tuple(n for n in ("qp", "diff_qp") if n in uplink_overrides)
        for line in coarse_qp_warnings(options, overridden):
            log(WARNING, "nnc_mod: %s", line)
        self.uplink_overrides = uplink_overrides

    def __call__(
        self, message: Message, context: Context, call_next: ClientAppCallable
    ) -> Message:
        category = message.metadata.message_type.split(".")[0]
        config_key = (
            _link_config_key(message) if category in ("train", "evaluate") else None
        )
        if config_key is None:
            return call_next(message, context)

        config = message.content[config_key]
        try:
            state = NodeLinkState.load(context.state, self.max_model_elements)
            array_key, bytes_in = self._apply_downlink(message, config, state)
        except (ValueError, TypeError, KeyError) as err:
            # Includes the codec's NNCFormatError; the server resyncs this node.
            reason = f"{link.RESYNC_REASON_PREFIX}{err}"
            log(WARNING, "nnc_mod: %s message rejected: %s", category, reason)
            error = Error(code=link.RESYNC_ERROR_CODE, reason=reason)
            return Message(error, reply_to=message)
        state.save(context.state)

        user_config = ConfigRecord(
            {k: v for k, v in config.items() if not k.startswith(CONFIG_PREFIX)}
        )
        records = dict(message.content.items())
        assert state.manifest is not None and state.reference is not None
        records[array_key] = link.from_reference(state.reference, state.manifest)
        records[config_key] = user_config
        message.content = RecordDict(records)

        reply = call_next(message, context)
        if reply.has_error():
            return reply

        link_entries: dict[str, Any] = {
            link.KEY_CHAIN: state.chain_id,
            link.KEY_VERSION: state.version,
        }
        bytes_out = 0
        if category == "train":
            assert state.options is not None
            options = state.options.with_overrides(**self.uplink_overrides)
            bytes_out = self._encode_uplink(reply, config, options, state, link_entries)
            state.save(context.state)

        content = reply.content
        content[link.LINK_RECORD_KEY] = ConfigRecord(link_entries)
        log(
            INFO,
            "nnc_mod: %s v%d: %d B in, %d B out",
            category,
            state.version,
            bytes_in,
            bytes_out,
        )
        return reply

    def _apply_downlink(
        self, message: Message, config: ConfigRecord, state: NodeLinkState
    ) -> tuple[str, int]:
        """Bring ``state`` to the message's version; returns the array key and bytes."""
        array_keys = [
            k for k, v in message.content.items() if isinstance(v, ArrayRecord)
        ]
        if len(array_keys) != 1:
            raise link.LinkError(f"expected one ArrayRecord, got {len(array_keys)}")
        record = message.content[array_keys[0]]
        chain_id = _int(config, link.KEY_CHAIN)
        target = _int(config, link.KEY_VERSION)
        start = _int(config, link.KEY_FROM_VERSION)
        kind = config.get(link.KEY_KIND)

        if state.chain_id != chain_id or state.manifest is None:
            state.forget(chain_id)
        if any(key in config for key in _OPTION_KEYS):
            missing = [key for key in _OPTION_KEYS if key not in config]
            if missing:
                raise link.LinkError(
                    f"message carries codec options without {', '.join(missing)}"
                )
            state.options = NNCOptions.from_config(config)
        if state.options is None:
            raise link.LinkError("message carries no codec options, and none are held")
        options = state.options
        if kind not in link.KINDS:
            raise link.LinkError(f"{link.KEY_KIND}={kind!r} is not a downlink kind")

        limit = self.max_model_elements
        if kind == link.KIND_FULL:
            _apply_full(state, config, record, options, limit)
        elif kind == link.KIND_INTRA:
            state.manifest = link.manifest_from_json(
                config.get(link.KEY_MANIFEST), limit
            )
            segments, plains = _segments(config, record, expected=1)
            state.reference = link.decode_update(
                segments[0], state.manifest, base=None, plain=plains[0]
            )
        else:
            if start == 0:
                state.manifest = link.manifest_from_json(
                    config.get(link.KEY_MANIFEST), limit
                )
                state.reference = link.zero_reference(state.manifest)
                state.down_base = (
                    link.new_base_state(link.DOWNLINK_DEVICE_ID)
                    if options.tca_active
                    else None
                )
                state.version = 0
            if state.manifest is None or state.reference is None:
                raise link.LinkError("no reference model held, and none sent")
            if not start <= state.version <= target:
                raise link.LinkError(
                    f"node holds version {state.version}, payload covers "
                    f"{start}..{target}"
                )
            segments, plains = _segments(config, record, expected=target - start)
            for index in range(state.version - start, target - start):
                update = link.decode_update(
                    segments[index],
                    state.manifest,
                    base=state.down_base,
                    plain=plains[index],
                )
                state.reference = {
                    k: state.reference[k] + update[k] for k in state.reference
                }
        state.chain_id, state.version = chain_id, target
        return array_keys[0], link.payload_bytes(record)

    def _encode_uplink(
        self,
        reply: Message,
        config: ConfigRecord,
        options: NNCOptions,
        state: NodeLinkState,
        link_entries: dict[str, Any],
    ) -> int:
        """Replace the reply's weights by their coded update; returns its bytes."""
        assert state.manifest is not None and state.reference is not None
        content = reply.content
        array_keys = [k for k, v in content.items() if isinstance(v, ArrayRecord)]
        if not options.compress_upstream or len(array_keys) != 1:
            link_entries[link.KEY_KIND] = link.KIND_FULL
            return sum(link.payload_bytes(content[k]) for k in array_keys)

        trained = link.record_to_arrays(content[array_keys[0]])
        link.check_tensor_names(trained, state.manifest, "trained model")
        trained = link.to_reference(trained, state.manifest)  # manifest order

        if options.compress_differences:
            update = {k: trained[k] - state.reference[k] for k in trained}
            if options.err_accumulation and state.residual is not None:
                update = {
                    k: update[k] + state.residual[k]
                    if k in state.residual
                    else update[k]
                    for k in update
                }
            base, seq, base_id = self._uplink_base(config, options, state)
            bitstream, reconstruction, plain = link.encode_update(
                update,
                state.manifest,
                options,
                base=base,
                device_id=link.UPLINK_DEVICE_ID,
                sparsify=True,
            )
            if options.err_accumulation:
                state.residual = {
                    k: (update[k] - reconstruction[k]).astype(np.float32)
                    for k in update
                    if update[k].dtype == np.float32
                }
            state.up_base, state.up_seq = base, (seq + 1 if base is not None else 0)
            state.up_base_id = base_id
            kind = link.KIND_DELTA
        else:
            bitstream, _, plain = link.encode_update(
                trained,
                state.manifest,
                options,
                base=None,
                device_id=link.UPLINK_DEVICE_ID,
                sparsify=False,
            )
            seq, base_id, kind = 0, 0, link.KIND_INTRA

        payload, lengths, crc32 = link.payload_record([bitstream], [plain])
        content[array_keys[0]] = payload
        link_entries.update(
            {
                link.KEY_KIND: kind,
                link.KEY_UP_SEQ: link.up_tag(base_id, seq),
                link.KEY_SEGMENTS: lengths,
                link.KEY_CRC32: crc32,
            }
        )
        return link.payload_bytes(payload)

    @staticmethod
    def _uplink_base(
        config: ConfigRecord, options: NNCOptions, state: NodeLinkState
    ) -> tuple[Any | None, int, int]:
        # (base, up-seq, base id). Continue on our TCA base only if the
        # server holds the same one: same id, same number of updates on it.
        if not options.tca_active:
            return None, 0, 0
        announced = config.get(link.KEY_UP_SEQ)
        if (
            state.up_base is not None
            and 0 < state.up_seq < (1 << link.UP_SEQ_BITS) - 1
            and announced == link.up_tag(state.up_base_id, state.up_seq)
        ):
            return state.up_base, state.up_seq, state.up_base_id
        if state.up_seq > 0:
            # The server lost our last update: its residual is no longer ours.
            state.residual = None
        return link.new_base_state(link.UPLINK_DEVICE_ID), 0, link.new_base_id()


def nnc_mod(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Flower mod that NNC-decodes incoming and NNC-codes outgoing models.

    Register it first: ``ClientApp(mods=[nnc_mod])``. It needs no arguments:
    the server sends the codec options along with the model's manifest, and
    the mod keeps both in ``context.state``.
    """
    return _DEFAULT_MOD(message, context, call_next)


_DEFAULT_MOD = NNCMod()


def _link_config_key(message: Message) -> str | None:
    # The ConfigRecord that carries the link protocol, if any.
    for key, record in message.content.items():
        if isinstance(record, ConfigRecord) and link.KEY_CHAIN in record:
            return key
    return None


def _apply_full(
    state: NodeLinkState,
    config: ConfigRecord,
    record: ArrayRecord,
    options: NNCOptions,
    max_elements: int,
) -> None:
    manifest = link.manifest_from_json(config.get(link.KEY_MANIFEST), max_elements)
    arrays = link.record_to_arrays(record)
    expected = {spec.name for spec in manifest}
    model_keys = {k for k in arrays if not k.startswith(link.BASE_PREFIX)}
    if model_keys != expected:
        raise link.LinkError("full payload's tensors differ from its manifest")
    state.manifest = manifest
    state.reference = link.to_reference(arrays, manifest)
    has_base = any(k.startswith(link.BASE_PREFIX) for k in arrays)
    if has_base:
        state.down_base = link.base_state_from_arrays(arrays)
    elif options.tca_active and options.compress_downstream:
        raise link.LinkError("keyframe lacks the TCA base")
    else:
        state.down_base = None


def _segments(
    config: ConfigRecord, record: ArrayRecord, expected: int
) -> tuple[list[bytes], list[dict[str, np.ndarray]]]:
    return link.unpack_payload(
        record,
        config.get(link.KEY_SEGMENTS),
        config.get(link.KEY_CRC32),
        expected=expected,
    )


def _base_from_state(state: RecordDict, key: str) -> Any:
    return link.base_state_class().from_arrays(_arrays_from_state(state, key))


def _arrays_from_state(state: RecordDict, key: str) -> dict[str, np.ndarray]:
    record = state[key]
    if not isinstance(record, ArrayRecord):
        raise TypeError(
            f"stored {key} is a {type(record).__name__}, not an ArrayRecord"
        )
    return link.record_to_arrays(record)


def _checked_residual(
    residual: dict[str, np.ndarray], manifest: link.Manifest
) -> dict[str, np.ndarray] | None:
    # Float model tensors only, each in its shape, finite; else no residual.
    specs = {spec.name: spec for spec in manifest}
    for name, value in residual.items():
        spec = specs.get(name)
        fits = (
            spec is not None
            and spec.is_float
            and value.shape == spec.shape
            and value.dtype == np.float32
            and bool(np.all(np.isfinite(value)))
        )
        if not fits:
            log(
                WARNING,
                "nnc_mod: stored residual %r does not fit the model; dropping "
                "the residual (error feedback restarts)",
                name[:80],
            )
            return None
    return residual


def _options_from_json(text: Any) -> NNCOptions | None:
    # Stored as the nnc.<name> entries in a JSON object; {} when none held.
    if not isinstance(text, str):
        raise TypeError(f"stored options must be a JSON string, got {text!r:.80}")
    entries = json.loads(text)
    if not isinstance(entries, dict):
        raise TypeError(f"stored options must be a JSON object, got {text!r:.80}")
    return NNCOptions.from_config(entries) if entries else None


def _int(record: Any, key: str) -> int:
    if key not in record:
        raise link.LinkError(f"message lacks the link entry {key}")
    value = record[key]
    if type(value) is not int or value < 0:
        raise link.LinkError(f"{key} must be a non-negative int, got {value!r}")
    return value
