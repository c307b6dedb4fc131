"""Pieces both ends of an NNC link share: wire keys, model manifests, payload
packing, and coding of one model update with the codec.

A *link* is one direction between the server and a node. Each end keeps a
float reference (the model the other end reconstructs) and, with TCA, an integer
``BaseState``; the helpers here never keep state themselves.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from flwr_nncodec import hls

# One coded payload per message travels as this Array in the ArrayRecord.
PAYLOAD_KEY = "nnc.payload"
# v3: KEY_UP_SEQ carries an (id, count) tag; a v2 peer is refused by name.
PAYLOAD_STYPE = "nnc.v3"

# Record key of the link metadata a node adds to its reply.
LINK_RECORD_KEY = "nnc.link"

# ConfigRecord keys of the link protocol (the codec options use nnc.<option>).
KEY_CHAIN = "nnc.chain-id"
KEY_VERSION = "nnc.version"
KEY_FROM_VERSION = "nnc.from-version"
KEY_KIND = "nnc.kind"
KEY_SEGMENTS = "nnc.segments"
KEY_CRC32 = "nnc.crc32"
KEY_MANIFEST = "nnc.manifest"
KEY_UP_SEQ = "nnc.up-seq"  # the uplink base tag, see up_tag()

# The uplink TCA base a message refers to travels as one tag: a random id
# the node draws for every base it starts, times 2^UP_SEQ_BITS, plus the
# number of updates coded on that base. The count alone can repeat (after two
# lost replies both sides are at #1 of different bases); the id cannot.
UP_SEQ_BITS = 24
MAX_UP_BASE_ID = (1 << 38) - 1  # tags stay below 2^62

# Payload kinds. "delta": chain segments added to the node's reference;
# "intra": one segment that decodes to the whole reference; "full": plain float
# arrays (keyframe or uncompressed link), with the TCA base alongside.
KIND_DELTA = "delta"
KIND_INTRA = "intra"
KIND_FULL = "full"
KINDS = (KIND_DELTA, KIND_INTRA, KIND_FULL)

# Prefix of the TCA base arrays inside a "full" payload.
BASE_PREFIX = "nnc.base/"

# Integer tensors NNC cannot code (uint64, or an update outside the int32 range)
# travel exactly, beside the bitstreams, as "nnc.plain/<segment index>/<name>"
# arrays in the reference dtype; they stand for what the segment would code.
PLAIN_PREFIX = "nnc.plain/"

# Error replies the mod sends when the node cannot follow the server (Flower's
# ErrorCode.MOD_FAILED_PRECONDITION); the server resets that node's links.
RESYNC_ERROR_CODE = 6
RESYNC_REASON_PREFIX = "nnc-resync: "

# qp_density of every stream the plugin writes (NNCodec's fixed value).
QP_DENSITY = 2

# NNC device ids of the two link directions (the TCA base asserts on them).
DOWNLINK_DEVICE_ID = 0
UPLINK_DEVICE_ID = 1

_FLOAT_DTYPES = ("float16", "float32", "float64")
_INT_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)
# Most elements a received manifest may describe, by default: a node would
# allocate its reference model from it (2^28 float32 values = 1 GiB), so a
# few bytes must not make it allocate more. Same as the decoder's default
# limit per stream. NNCMod(max_model_elements=...) raises it.
DEFAULT_MAX_MODEL_ELEMENTS = hls.DEFAULT_MAX_TOTAL_ELEMENTS


class LinkError(ValueError):
    """A payload or a link message does not fit the state of this end."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model tensor as the user's code sees it."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT_DTYPES

    @property
    def reference_dtype(self) -> type:
        """float32 for floats, uint64 for uint64 (wrapping sums), int64 else."""
        if self.is_float:
            return np.float32
        return np.uint64 if self.dtype == "uint64" else np.int64


Manifest = tuple[TensorSpec, ...]


def manifest_of(arrays: dict[str, np.ndarray]) -> Manifest:
    """Describe a model; raises TypeError for dtypes NNC cannot code."""
    specs = []
    for name, array in arrays.items():
        dtype = str(array.dtype)
        if dtype not in _FLOAT_DTYPES + _INT_DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be NNC-coded")
        specs.append(TensorSpec(name, dtype, tuple(int(d) for d in array.shape)))
    return tuple(specs)


def manifest_to_json(manifest: Manifest) -> str:
    return json.dumps([[s.name, s.dtype, list(s.shape)] for s in manifest])


def manifest_from_json(
    text: Any, max_elements: int = DEFAULT_MAX_MODEL_ELEMENTS
) -> Manifest:
    """Parse a manifest received from the other end, checking every field.

    Raises LinkError naming the bad entry, or the element count when the
    model would hold more than ``max_elements`` values.
    """
    if not isinstance(text, str):
        raise LinkError(f"{KEY_MANIFEST} must be a string, got {type(text).__name__}")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise LinkError(f"{KEY_MANIFEST} is not JSON: {err}") from None
    if not isinstance(entries, list):
        raise LinkError(f"{KEY_MANIFEST} must be a list, got {type(entries).__name__}")

    specs, names, total_elements = [], set(), 0
    for index, entry in enumerate(entries):
        valid = (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and entry[1] in _FLOAT_DTYPES + _INT_DTYPES
            and isinstance(entry[2], list)
            and len(entry[2]) <= hls.MAX_TENSOR_DIMS
            and all(type(d) is int and 0 <= d < (1 << 32) for d in entry[2])
        )
        if not valid or entry[0] in names:
            raise LinkError(f"{KEY_MANIFEST} entry #{index} is invalid: {entry!r:.80}")
        total_elements += math.prod(entry[2])  # exact: no int64 overflow
        if total_elements > max_elements:
            raise LinkError(
                f"{KEY_MANIFEST} describes a model of more than {max_elements:,} "
                f"values (entry #{index} {entry[0]!r:.80} has shape {entry[2]}); "
                "a node accepts larger models with NNCMod(max_model_elements=...)"
            )
        names.add(entry[0])
        specs.append(TensorSpec(entry[0], entry[1], tuple(entry[2])))
    return tuple(specs)


def count_parameters(manifest: Manifest) -> int:
    return sum(spec.num_elements for spec in manifest)


def wire_names(manifest: Manifest) -> dict[str, str]:
    """Name of each tensor inside the bitstreams: its manifest position.

    NDU headers carry a topology element id per tensor; both ends hold the
    manifest, so "0", "1", ... say as much as the model's own names at a
    fraction of the bytes (a 25-character name costs 25 bytes per tensor
    per message). TCA bases are keyed by these names too.
    """
    return {spec.name: str(index) for index, spec in enumerate(manifest)}


def _specs_by_wire_name(manifest: Manifest) -> dict[str, TensorSpec]:
    return {str(index): spec for index, spec in enumerate(manifest)}


def _with_model_name(text: str, manifest: Manifest) -> str:
    # Codec errors quote the wire name ('3'); add the model's name for it.
    match = re.search(r"'(\d{1,9})'", text)
    spec = _specs_by_wire_name(manifest).get(match.group(1)) if match else None
    if spec is None:
        return text
    return f"{text} (tensor {match.group(1)} is {spec.name!r:.80})"


def _from_wire(tensors: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
    # Back to the model's names; a name outside the manifest stays as it is
    # (and is then refused by whoever checks the result against the manifest).
    specs = _specs_by_wire_name(manifest)
    return {
        specs[key].name if key in specs else key: value
        for key, value in tensors.items()
    }


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Plain numpy arrays of a record; TypeError names a non-numpy entry."""
    arrays = {}
    for name, array in record.items():
        if array.stype != "numpy.ndarray":
            raise TypeError(f"array {name!r} has stype {array.stype!r}, not numpy")
        arrays[name] = array.numpy()
    return arrays


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    # np.ascontiguousarray would turn 0-d arrays into shape (1,).
    return ArrayRecord(
        {name: Array(np.array(a, order="C", copy=True)) for name, a in arrays.items()}
    )


def to_reference(
    arrays: dict[str, np.ndarray], manifest: Manifest
) -> dict[str, np.ndarray]:
    """The form each end keeps a model in: float32 or int64, manifest shapes."""
    reference = {}
    for spec in manifest:
        array = np.asarray(arrays[spec.name])
        if array.shape != spec.shape:
            raise LinkError(
                f"tensor {spec.name!r} has shape {array.shape}, expected {spec.shape}"
            )
        reference[spec.name] = array.astype(spec.reference_dtype, copy=True)
    return reference


def zero_reference(manifest: Manifest) -> dict[str, np.ndarray]:
    return {spec.name: np.zeros(spec.shape, spec.reference_dtype) for spec in manifest}


def from_reference(reference: dict[str, np.ndarray], manifest: Manifest) -> ArrayRecord:
    """An ordinary ArrayRecord in the user's dtypes, in manifest order."""
    return arrays_to_record(
        {spec.name: reference[spec.name].astype(spec.dtype) for spec in manifest}
    )


def pack_segments(segments: list[bytes]) -> tuple[Array, list[int], int]:
    """Concatenate bitstreams into one payload Array; returns it, lengths, CRC-32."""
    data = b"".join(segments)
    array = Array(dtype="uint8", shape=(len(data),), stype=PAYLOAD_STYPE, data=data)
    return array, [len(s) for s in segments], zlib.crc32(data)


def unpack_segments(array: Array, lengths: Any, crc32: Any) -> list[bytes]:
    """Split a payload Array back into its bitstreams, checking lengths and CRC."""
    if array.stype != PAYLOAD_STYPE:
        raise LinkError(
            f"payload has stype {array.stype!r}, expected {PAYLOAD_STYPE!r}"
        )
    data = bytes(array.data)
    valid_lengths = isinstance(lengths, list) and all(
        type(n) is int and n >= 0 for n in lengths
    )
    if not valid_lengths or sum(lengths) != len(data):
        raise LinkError(
            f"{KEY_SEGMENTS}={lengths!r:.80} does not split a {len(data)}-byte payload"
        )
    if zlib.crc32(data) != crc32:
        raise LinkError(
            f"payload CRC-32 {zlib.crc32(data):#010x} differs from "
            f"{KEY_CRC32}={crc32!r}"
        )

    segments, offset = [], 0
    for length in lengths:
        segments.append(data[offset : offset + length])
        offset += length
    return segments


def payload_record(
    segments: list[bytes], plains: list[dict[str, np.ndarray]]
) -> tuple[ArrayRecord, list[int], int]:
    """The ArrayRecord of coded segments and their plain tensors; returns it,
    the segment lengths and the CRC-32 of the bitstreams."""
    array, lengths, crc32 = pack_segments(segments)
    record = {PAYLOAD_KEY: array}
    for index, plain in enumerate(plains):
        for name, value in plain.items():
            record[f"{PLAIN_PREFIX}{index}/{name}"] = Array(
                np.array(value, order="C", copy=True)
            )
    return ArrayRecord(record), lengths, crc32


def unpack_payload(
    record: ArrayRecord, lengths: Any, crc32: Any, expected: int
) -> tuple[list[bytes], list[dict[str, np.ndarray]]]:
    """Split a payload record into ``expected`` segments and their plain tensors."""
    # Count the segments first: ``expected`` comes from the message's version
    # numbers and is trusted only once the payload agrees with it.
    if PAYLOAD_KEY not in record:
        raise LinkError(f"payload record lacks {PAYLOAD_KEY!r}")
    segments = unpack_segments(record[PAYLOAD_KEY], lengths, crc32)
    if len(segments) != expected:
        raise LinkError(f"payload holds {len(segments)} segments, expected {expected}")

    plains: list[dict[str, np.ndarray]] = [{} for _ in range(expected)]
    for key in record.keys():
        if key == PAYLOAD_KEY:
            continue
        index_text, _, name = key[len(PLAIN_PREFIX) :].partition("/")
        valid = (
            key.startswith(PLAIN_PREFIX)
            and index_text.isdigit()
            and int(index_text) < expected
            and name
        )
        if not valid:
            raise LinkError(f"payload record holds an unexpected array {key!r:.80}")
        if record[key].stype != "numpy.ndarray":
            raise LinkError(f"plain tensor {key!r:.80} is not a numpy array")
        plains[int(index_text)][name] = record[key].numpy()
    return segments, plains


def payload_bytes(record: ArrayRecord) -> int:
    """Bytes an ArrayRecord puts on the wire as array data."""
    return sum(len(array.data) for array in record.values())


# -- codec access --------------------------------------------------------------


def codec_api() -> Any:
    """The codec module (imported on first use, so this module loads without it)."""
    import flwr_nncodec.codec as codec  # pylint: disable=import-outside-toplevel

    return codec


def base_state_class() -> Any:
    from flwr_nncodec.base_state import BaseState  # pylint: disable=C0415

    return BaseState


def new_base_state(device_id: int) -> Any:
    return base_state_class()(device_id=device_id)


def new_base_id() -> int:
    """A fresh uplink base id: random, 1 .. MAX_UP_BASE_ID."""
    return secrets.randbelow(MAX_UP_BASE_ID) + 1


def up_tag(base_id: int, seq: int) -> int:
    """The KEY_UP_SEQ value of update ``seq`` on uplink base ``base_id``."""
    return (base_id << UP_SEQ_BITS) | seq


def split_up_tag(tag: object) -> tuple[int, int]:
    """(base id, update count) of a KEY_UP_SEQ value; LinkError if malformed.
    A node without base ids sends the bare count: id 0."""
    if type(tag) is not int or not 0 <= tag < (1 << 62):
        raise LinkError(f"{KEY_UP_SEQ} must be an int in [0, 2^62), got {tag!r}")
    return tag >> UP_SEQ_BITS, tag & ((1 << UP_SEQ_BITS) - 1)


def base_state_to_arrays(base: Any) -> dict[str, np.ndarray]:
    return {BASE_PREFIX + k: np.asarray(v) for k, v in base.to_arrays().items()}


def base_state_from_arrays(arrays: dict[str, np.ndarray]) -> Any:
    state = {
        k[len(BASE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(BASE_PREFIX)
    }
    return base_state_class().from_arrays(state)


def copy_base_state(base: Any) -> Any:
    return base.copy()


def encode_update(
    update: dict[str, np.ndarray],
    manifest: Manifest,
    options: Any,
    *,
    base: Any | None,
    device_id: int,
    sparsify: bool,
) -> tuple[bytes, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Code one update (a difference, or a whole model when not differential).

    Returns the bitstream, the reconstruction the decoder will get (every
    manifest tensor, zeros where the stream drops it) and the plain tensors:
    integer updates NNC cannot code (uint64, or values outside int32), which
    travel exactly beside the stream. With a ``base`` the encoder advances it,
    as the decoder at the other end will. Inside the stream the tensors go by
    their ``wire_names``.
    """
    coded, plain = {}, {}
    for spec in manifest:
        if spec.num_elements == 0:
            continue
        value = update[spec.name]
        if spec.is_float:
            coded[spec.name] = np.ascontiguousarray(value, dtype=np.float32)
        elif spec.dtype == "uint64" or not _fits_int32(value):
            plain[spec.name] = np.asarray(value).astype(spec.reference_dtype)
        else:
            coded[spec.name] = np.ascontiguousarray(value, dtype=np.int32)

    if sparsify:
        coded = _sparsified(coded, options)
    names = wire_names(manifest)
    coded = {names[name]: value for name, value in coded.items()}

    result = codec_api().encode_with_reconstruction(
        coded,
        qp=options.coding_qp,
        nonweight_qp=options.nonweight_qp,
        use_dq=options.use_dq,
        param_opt=options.param_opt,
        lambda_scale=options.lambda_scale,
        row_skipping=options.row_skipping,
        compress_differences=options.compress_differences,
        tca=options.tca_active and base is not None,
        base=base,
        update_base=base is not None,
        device_id=device_id,
        scan_order=options.scan_order,
    )
    reconstruction = _complete(
        _from_wire(result.reconstruction, manifest), manifest, "encoder"
    )
    reconstruction.update({k: v.copy() for k, v in plain.items()})
    return bytes(result.bitstream), reconstruction, plain


def _sparsified(tensors: dict[str, np.ndarray], options: Any) -> dict[str, np.ndarray]:
    # As fl.py: the unstructured threshold is measured in steps of ``qp`` (not
    # ``diff_qp``), then whole output channels go; only float tensors with
    # ndim >= 2 are touched, but every tensor counts toward the target.
    from flwr_nncodec import sparsify  # pylint: disable=import-outside-toplevel

    if options.sparsity > 0:
        tensors = sparsify.sparsify_unstructured(
            tensors, options.qp, QP_DENSITY, options.sparsity
        )
    if options.struct_spars_factor > 0:
        tensors = sparsify.sparsify_structured(tensors, options.struct_spars_factor)
    return tensors


def decode_update(
    bitstream: bytes,
    manifest: Manifest,
    *,
    base: Any | None,
    plain: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Decode one update against ``base`` (advanced in place when given).

    Raises the codec's NNCFormatError for a broken stream and LinkError when
    the stream's tensors do not fit the manifest or hold non-finite values.
    The stream's headers are checked against the manifest before anything is
    decoded, and the decoder may allocate no more than the manifest holds, so
    a few bytes from the other end cannot make this end allocate or spin on
    tensors the model does not have. ``plain`` holds the tensors that came
    uncoded beside the stream (integer tensors only, in the reference dtype).
    """
    check_stream_fits(bitstream, manifest)
    plain = _checked_plain(plain or {}, manifest)
    max_elements = max((spec.num_elements for spec in manifest), default=0)
    try:
        decoded = codec_api().decode(
            bitstream,
            base=base,
            update_base=base is not None,
            max_elements=max(1, max_elements),
            max_total_elements=max(1, count_parameters(manifest)),
        )
    except ValueError as err:
        raise LinkError(_with_model_name(str(err), manifest)) from err
    decoded = _from_wire(decoded, manifest)
    both = sorted(set(decoded) & set(plain))
    if both:
        raise LinkError(f"tensors {both[:5]} come both coded and plain")
    complete = _complete(decoded, manifest, "stream")
    complete.update(plain)
    return complete


def _checked_plain(
    plain: dict[str, np.ndarray], manifest: Manifest
) -> dict[str, np.ndarray]:
    # Plain tensors must be integer model tensors in their reference form.
    by_name = {spec.name: spec for spec in manifest}
    checked = {}
    for name, value in plain.items():
        spec = by_name.get(name)
        if spec is None or spec.is_float:
            raise LinkError(f"plain tensor {name!r:.80} is not an integer model tensor")
        array = np.asarray(value)
        wanted = np.dtype(spec.reference_dtype)
        if array.shape != spec.shape or array.dtype != wanted:
            raise LinkError(
                f"plain tensor {name!r} is {array.dtype}{list(array.shape)}, "
                f"expected {wanted}{list(spec.shape)}"
            )
        checked[name] = array.copy()
    return checked


def check_stream_fits(bitstream: bytes, manifest: Manifest) -> None:
    """Raise LinkError unless every NDU of the stream codes one manifest tensor,
    with the manifest's shape and a payload type of its dtype, at most once.

    Reads headers only (``inspect``); the per-tensor element limit is the
    manifest's largest tensor, so an oversized header fails while parsing.
    """
    from flwr_nncodec.inspection import inspect  # pylint: disable=C0415

    by_wire_name = _specs_by_wire_name(manifest)
    max_elements = max((spec.num_elements for spec in manifest), default=0)
    units = inspect(bitstream, max_elements=max(1, max_elements))

    seen: set[str] = set()
    for unit in units:
        if unit["type"] != "NDU":
            continue
        wire_name = unit["name"]
        spec = by_wire_name.get(wire_name)  # type: ignore[arg-type]
        if spec is None:
            raise LinkError(
                f"stream holds tensor {wire_name!r:.80}, not a tensor number of "
                f"the model (0..{len(manifest) - 1})"
            )
        if wire_name in seen:
            raise LinkError(f"stream holds tensor {wire_name!r} more than once")
        seen.add(wire_name)  # type: ignore[arg-type]
        name = f"#{wire_name} {spec.name!r}"

        shape = tuple(unit["shape"])  # type: ignore[arg-type]
        fits = shape == spec.shape or (spec.shape == () and shape == (1,))
        if not fits or spec.num_elements == 0:
            raise LinkError(
                f"stream tensor {name} has shape {shape!s:.80}, "
                f"the model's is {spec.shape}"
            )
        payload_type = unit["payload_type"]
        if (payload_type == "INT") == spec.is_float:
            raise LinkError(
                f"stream tensor {name} has payload type {payload_type}, "
                f"the model's dtype is {spec.dtype}"
            )


def check_tensor_names(arrays: dict[str, Any], manifest: Manifest, source: str) -> None:
    """Raise LinkError naming the difference unless ``arrays`` has exactly the
    manifest's tensor names (in any order)."""
    names = {spec.name for spec in manifest}
    if set(arrays) != names:
        missing = sorted(names - set(arrays))[:5]
        unknown = sorted(set(arrays) - names)[:5]
        raise LinkError(
            f"{source} lacks tensors {missing} and holds tensors not in the "
            f"model {unknown}"
        )


def check_plain_model(
    arrays: dict[str, np.ndarray], manifest: Manifest, source: str
) -> None:
    """Raise LinkError unless ``arrays`` holds exactly the manifest's tensors,
    each in its shape and dtype, with finite values in float tensors."""
    check_tensor_names(arrays, manifest, source)
    for spec in manifest:
        array = arrays[spec.name]
        if tuple(array.shape) != spec.shape:
            raise LinkError(
                f"{source} tensor {spec.name!r} has shape {tuple(array.shape)}, "
                f"the model's is {spec.shape}"
            )
        if str(array.dtype) != spec.dtype:
            raise LinkError(
                f"{source} tensor {spec.name!r} has dtype {array.dtype}, "
                f"the model's is {spec.dtype}"
            )
        if spec.is_float and not np.all(np.isfinite(array)):
            raise LinkError(f"{source} tensor {spec.name!r} holds non-finite values")


def _complete(
    tensors: dict[str, Any], manifest: Manifest, source: str
) -> dict[str, np.ndarray]:
    # Reshape what the codec gives back to the manifest; absent tensors are zero.
    by_name = {spec.name: spec for spec in manifest}
    unknown = sorted(set(tensors) - set(by_name))
    if unknown:
        raise LinkError(f"{source} holds tensors not in the model: {unknown[:5]}")

    complete = zero_reference(manifest)
    for name, value in tensors.items():
        spec = by_name[name]
        array = np.asarray(value)
        if array.size != spec.num_elements:
            raise LinkError(
                f"{source} tensor {name!r} has {array.size} elements, "
                f"expected {spec.num_elements}"
            )
        if spec.is_float and not np.all(np.isfinite(array)):
            raise LinkError(f"{source} tensor {name!r} holds non-finite values")
        complete[name] = array.reshape(spec.shape).astype(complete[name].dtype)
    return complete


def _fits_int32(value: np.ndarray) -> bool:
    value = np.asarray(value)
    info = np.iinfo(np.int32)
    return not value.size or (value.min() >= info.min and value.max() <= info.max)
