"""``flwr-nncodec``: encode, decode and inspect NNC bitstreams from the shell.

    flwr-nncodec encode model.pt model.nnc --qp -38 --no-use-dq
    flwr-nncodec decode model.nnc restored.safetensors
    flwr-nncodec info model.nnc

Parameter files are ``.pt``/``.pth`` (a torch state dict, read with
``weights_only=True``), ``.npz`` (read without pickle) or ``.safetensors``.
User errors (missing or corrupt files, option values the codec refuses, an
existing output) print one line to stderr and exit with status 1; nothing is
overwritten without ``--force``. A command line argparse cannot parse (an
unknown option, ``--qp x``) prints the usage and exits with status 2, as
argparse does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flwr_nncodec import model_io

logger = logging.getLogger("flwr_nncodec.cli")

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130

# Models with at least this many parameters get a progress bar on a terminal.
PROGRESS_MIN_PARAMS = 1_000_000
PROGRESS_MIN_BYTES = 1_000_000


class UserError(Exception):
    """A problem the user can fix; reported as one line without a traceback."""


# ---------------------------------------------------------------------------
# argument parsing


def _add_flag_pair(group, name: str, help_text: str) -> None:
    """Add ``--name/--no-name`` without a default (unset: the codec decides)."""
    group.add_argument(
        f"--{name.replace('_', '-')}",
        dest=name,
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help=help_text,
    )


def _add_option(group, name: str, value_type, help_text: str, **kwargs) -> None:
    """Add ``--name VALUE`` without a default (unset: the codec decides)."""
    group.add_argument(
        f"--{name.replace('_', '-')}",
        dest=name,
        type=value_type,
        default=argparse.SUPPRESS,
        help=help_text,
        **kwargs,
    )


def _package_version() -> str:
    from flwr_nncodec import __version__  # pylint: disable=import-outside-toplevel

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``flwr-nncodec`` command."""
    parser = argparse.ArgumentParser(
        prog="flwr-nncodec",
        description="Code model parameters with NNC (ISO/IEC 15938-17).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {_package_version()} (NNC, ISO/IEC 15938-17)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing but warnings and errors",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: on a terminal, for models of at least "
        f"{PROGRESS_MIN_PARAMS:,} parameters)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # -q after the command too (flwr-nncodec encode -q ...); SUPPRESS keeps a
    # -q given before the command.
    quiet_after = argparse.ArgumentParser(add_help=False)
    quiet_after.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print nothing but warnings and errors",
    )

    encode = commands.add_parser(
        "encode",
        parents=[quiet_after],
        help="code a parameter file (.pt, .npz, .safetensors) into an NNC bitstream",
        description="Code a parameter file into an NNC bitstream. Options keep "
        "NNCodec's names (--use_dq and --use-dq both work); unset options take the "
        "codec's defaults.",
    )
    encode.add_argument("input", type=Path, help="parameter file to code")
    encode.add_argument("output", type=Path, help="bitstream to write (.nnc)")
    encode.add_argument("-f", "--force", action="store_true", help="overwrite OUTPUT")
    options = encode.add_argument_group("codec options (NNCodec names)")
    _add_option(options, "qp", int, "quantisation parameter of weights (default -32)")
    _add_option(options, "qp_density", int, "qp steps per doubling, log2 (default 2)")
    _add_option(
        options, "nonweight_qp", int, "qp of 1-D tensors such as biases (default -75)"
    )
    _add_flag_pair(options, "use_dq", "dependent (trellis) quantisation (default on)")
    _add_flag_pair(options, "row_skipping", "signal all-zero rows (default on)")
    _add_flag_pair(options, "param_opt", "choose context initialisations (default on)")
    _add_option(options, "bitdepth", int, "integer mode: bits per parameter")
    _add_option(
        options,
        "approx_method",
        str,
        "quantiser family (default uniform)",
        choices=("uniform", "codebook"),
    )
    _add_option(
        options, "lambda_scale", float, "rate-distortion trade-off; 0 = minimum MSE"
    )
    _add_option(options, "sparsity", float, "target share of zeros (0 to 1)")
    _add_option(options, "struct_spars_factor", float, "structured sparsification gain")
    _add_option(options, "device_id", int, "device id written into each unit")
    _add_option(
        options, "num_threads", int, "encoder threads (default 0: one per core)"
    )
    _add_option(
        options,
        "scan_order",
        int,
        "0 raster (default); 1-4: blocks of 4 << N with entry points, whose "
        "block rows decode in parallel",
    )

    decode = commands.add_parser(
        "decode",
        parents=[quiet_after],
        help="decode an NNC bitstream into a parameter file",
        description="Decode an NNC bitstream; the output format follows OUTPUT's "
        "extension (.npz, .safetensors, .pt).",
    )
    decode.add_argument("input", type=Path, help="bitstream to decode")
    decode.add_argument("output", type=Path, help=".npz, .safetensors or .pt to write")
    decode.add_argument("-f", "--force", action="store_true", help="overwrite OUTPUT")
    decode.add_argument(
        "--dtype",
        choices=model_io.FLOAT_DTYPES,
        default="float32",
        help="dtype of the float tensors written (default float32; bfloat16 "
        "needs PyTorch and a .pt or .safetensors OUTPUT)",
    )
    decode.add_argument(
        "--like",
        type=Path,
        metavar="REFERENCE",
        help="a parameter file of the same model (.npz, .safetensors, .pt): give "
        "each tensor the reference's shape, and integer tensors its integer dtype "
        "(NNC sends a scalar as shape (1,) and integers as int32)",
    )
    decode.add_argument(
        "--num-threads",
        type=int,
        default=argparse.SUPPRESS,
        help="decoder threads (default 0: one per core)",
    )
    decode.add_argument(
        "--max-elements",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="largest tensor the decoder will allocate, in elements (default "
        "2**26; raise it for larger models)",
    )
    decode.add_argument(
        "--max-total-elements",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="largest sum of all tensors, in elements (default 2**28)",
    )

    info = commands.add_parser(
        "info",
        parents=[quiet_after],
        help="list the units and tensors of an NNC bitstream",
        description="List the NNR units and coded tensors of a bitstream: shape, qp, "
        "bytes and bits per parameter.",
    )
    info.add_argument("input", type=Path, help="bitstream to inspect")
    info.add_argument(
        "--json", action="store_true", help="print JSON instead of a table"
    )
    return parser


# ---------------------------------------------------------------------------
# helpers


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1, also written as 2**N."""
    try:
        if text.startswith("2**"):
            value = 2 ** int(text[3:])
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _codec():
    import flwr_nncodec

    return flwr_nncodec


def _format_error():
    from flwr_nncodec import NNCFormatError

    return NNCFormatError


def _echo(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text)


def _want_progress(args: argparse.Namespace, size: int, large_size: int) -> bool:
    if args.quiet:
        return False
    if args.progress is not None:
        return args.progress
    return sys.stderr.isatty() and size >= large_size


def _run_with_progress(
    work: Callable[[], Any], description: str, total: int, unit: str, show: bool
) -> Any:
    """Run ``work()``; with ``show``, keep a tqdm bar with the elapsed time alive.

    The codec call releases the GIL in its C++ part, so a thread can redraw the
    bar while it runs. The bar counts ``total`` units (parameters or bytes) and
    completes when ``work`` returns.
    """
    if not show:
        return work()
    try:
        from tqdm import tqdm
    except ImportError:
        return work()

    done = threading.Event()
    with tqdm(
        total=total, desc=description, unit=unit, unit_scale=True, leave=False
    ) as bar:

        def redraw() -> None:
            while not done.wait(0.25):
                bar.refresh()

        painter = threading.Thread(target=redraw, daemon=True)
        painter.start()
        try:
            result = work()
        finally:
            done.set()
            painter.join()
        bar.update(total)
    return result


def _prepare_parameters(
    path: Path, params: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Check dtypes: floats become float32, integers stay, anything else is an error."""
    prepared: dict[str, np.ndarray] = {}
    for name, array in params.items():
        if array.dtype == np.bool_ or not (
            np.issubdtype(array.dtype, np.floating)
            or np.issubdtype(array.dtype, np.integer)
        ):
            raise UserError(
                f"{path}: tensor {name!r} has dtype {array.dtype}; only float and "
                "integer tensors can be coded"
            )
        if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
            logger.info(
                "%s: tensor %r converted from %s to float32", path, name, array.dtype
            )
            array = array.astype(np.float32)
        prepared[name] = array
    return prepared


def _mse_of(
    params: dict[str, np.ndarray], reconstruction: dict[str, np.ndarray]
) -> tuple[float, int]:
    """Mean squared error over the float tensors, and their parameter count."""
    squared_error_sum = 0.0
    num_float_params = 0
    for name, original in params.items():
        if not np.issubdtype(original.dtype, np.floating):
            continue
        decoded = reconstruction.get(name)
        if decoded is None:
            decoded = np.zeros_like(original)
        difference = decoded.astype(np.float64).reshape(-1) - original.astype(
            np.float64
        ).reshape(-1)
        squared_error_sum += float(np.dot(difference, difference))
        num_float_params += original.size
    mse = squared_error_sum / num_float_params if num_float_params else 0.0
    return mse, num_float_params


def _corrupt_stream_message(path: Path, data: bytes, error: Exception) -> str:
    """Name the file and the format error; hint when it is a parameter file."""
    message = f"{path}: corrupt NNC bitstream: {error}"
    looks_like_zip = data[:4] == b"PK\x03\x04"  # .npz and .pt archives
    looks_like_safetensors = len(data) > 8 and data[8:9] == b"{"
    if looks_like_zip or looks_like_safetensors:
        message += " (this looks like a parameter file: use 'encode' to code it)"
    return message


def _check_output_path(path: Path, force: bool) -> None:
    if path.is_dir():
        raise UserError(f"{path}: is a directory")
    if os.path.lexists(path) and not force:
        raise UserError(f"{path}: file exists (use --force to overwrite it)")
    if not path.parent.exists():
        raise UserError(f"{path}: directory {path.parent} does not exist")


# ---------------------------------------------------------------------------
# commands

_CODEC_OPTION_NAMES = (
    "qp",
    "qp_density",
    "nonweight_qp",
    "use_dq",
    "row_skipping",
    "param_opt",
    "bitdepth",
    "approx_method",
    "lambda_scale",
    "sparsity",
    "struct_spars_factor",
    "device_id",
    "num_threads",
    "scan_order",
)


def command_encode(args: argparse.Namespace) -> int:
    """Code a parameter file into a bitstream and print its size and error."""
    if args.output.suffix.lower() in model_io.SUPPORTED_SUFFIXES:
        raise UserError(
            f"{args.output}: a bitstream is not a {args.output.suffix} file; "
            "name the output *.nnc"
        )
    _check_output_path(args.output, args.force)

    loaded = model_io.load_parameters(args.input)
    input_bytes = loaded.source_nbytes  # in the file's dtypes (bf16: 2 bytes)
    params = _prepare_parameters(args.input, loaded)
    options = {
        name: getattr(args, name) for name in _CODEC_OPTION_NAMES if hasattr(args, name)
    }
    num_params = sum(array.size for array in params.values())

    codec = _codec()
    started = time.perf_counter()
    try:
        result = _run_with_progress(
            lambda: codec.encode_with_reconstruction(params, **options),
            f"encoding {args.input.name}",
            num_params,
            "param",
            _want_progress(args, num_params, PROGRESS_MIN_PARAMS),
        )
    except (ValueError, TypeError) as error:
        raise UserError(f"{args.input}: cannot encode: {error}") from None
    encode_seconds = time.perf_counter() - started

    bitstream = bytes(result.bitstream)
    model_io.write_bytes(args.output, bitstream, overwrite=args.force)

    mse, _ = _mse_of(params, result.reconstruction)
    _warn_zeroed_tensors(args.input, params, result.reconstruction)
    _echo(
        args,
        f"{args.output}: {len(bitstream):,} bytes for {len(params)} tensors, "
        f"{num_params:,} parameters ({8 * len(bitstream) / max(num_params, 1):.3f} "
        f"bits/param, {_size_ratio(len(bitstream), input_bytes)} "
        f"{input_bytes:,} input bytes), MSE {mse:.4g}, {encode_seconds:.2f} s",
    )
    return EXIT_OK


def _warn_zeroed_tensors(
    path: Path, params: dict[str, np.ndarray], reconstruction: dict[str, np.ndarray]
) -> None:
    """Warn about float tensors that held non-zero values and decode to all
    zeros: every value was below half a quantisation step (a lower --qp, or
    --nonweight_qp for 1-D tensors, keeps them)."""
    for name, original in params.items():
        decoded = reconstruction.get(name)
        if decoded is None or original.dtype.kind != "f" or not original.size:
            continue
        if np.any(original) and not np.any(decoded):
            logger.warning(
                "%s: tensor %r decodes to all zeros (max |x| = %.3g is below half "
                "its quantisation step); use a lower --qp (--nonweight_qp for "
                "1-D tensors) to keep it",
                path,
                name,
                float(np.max(np.abs(original))),
            )


def _size_ratio(output_bytes: int, input_bytes: int) -> str:
    """'4.0x smaller than' or, when the stream is bigger, '1.5x larger than'."""
    if output_bytes <= input_bytes:
        return f"{input_bytes / max(output_bytes, 1):.1f}x smaller than"
    return f"{output_bytes / max(input_bytes, 1):.1f}x larger than"


def command_decode(args: argparse.Namespace) -> int:
    """Decode a bitstream into a parameter file in the format OUTPUT names."""
    _check_output_path(args.output, args.force)
    model_io.check_float_dtype(args.output, args.dtype)
    bitstream = model_io.read_bytes(args.input)
    decode_options = {}
    for name in ("num_threads", "max_elements", "max_total_elements"):
        if hasattr(args, name):
            decode_options[name] = getattr(args, name)

    # The reference is read first: a bad one fails before the decoding work.
    like = None
    if args.like is not None:
        try:
            like = model_io.load_parameters(args.like)
        except model_io.ModelFileError as error:
            raise UserError(f"--like {error}") from None

    codec = _codec()
    started = time.perf_counter()
    try:
        params = _run_with_progress(
            lambda: codec.decode(bitstream, **decode_options),
            f"decoding {args.input.name}",
            len(bitstream),
            "B",
            _want_progress(args, len(bitstream), PROGRESS_MIN_BYTES),
        )
    except _format_error() as error:
        raise UserError(_corrupt_stream_message(args.input, bitstream, error)) from None
    except ValueError as error:
        raise UserError(f"{args.input}: cannot decode: {error}") from None
    decode_seconds = time.perf_counter() - started
    if like is not None:
        params = restore_like(params, like, args.like)

    model_io.save_parameters(
        args.output, params, overwrite=args.force, float_dtype=args.dtype
    )
    num_params = sum(array.size for array in params.values())
    _echo(
        args,
        f"{args.output}: {len(params)} tensors, {num_params:,} parameters decoded "
        f"from {len(bitstream):,} bytes in {decode_seconds:.2f} s "
        f"(floats as {args.dtype})",
    )
    return EXIT_OK


def restore_like(
    decoded: dict[str, np.ndarray], reference: dict[str, np.ndarray], label: Path
) -> dict[str, np.ndarray]:
    """Decoded tensors in the shapes of `reference`, integer tensors in its
    integer dtypes (bool included). UserError when a tensor is missing from
    the reference, has another number of values, or holds a value that the
    reference's dtype cannot."""
    missing = [name for name in decoded if name not in reference]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"--like {label}: has no tensor {shown}{more} of the stream; "
            "is it the same model?"
        )

    restored: dict[str, np.ndarray] = {}
    for name, array in decoded.items():
        like = reference[name]
        if array.size != like.size:
            raise UserError(
                f"--like {label}: tensor {name!r} has shape {like.shape}, the "
                f"stream's has {array.shape} ({array.size:,} values)"
            )
        array = array.reshape(like.shape)
        if array.dtype.kind in "iu" and like.dtype.kind in "iub":
            array = _cast_integers(array, like.dtype, name, label)
        restored[name] = array

    left_out = [name for name in reference if name not in decoded]
    if left_out:
        logger.info(
            "--like %s: %d tensor(s) not in the stream, not written (%s)",
            label,
            len(left_out),
            ", ".join(repr(name) for name in left_out[:3])
            + (", ..." if len(left_out) > 3 else ""),
        )
    return restored


def _cast_integers(
    array: np.ndarray, dtype: np.dtype, name: str, label: Path
) -> np.ndarray:
    """array as dtype, after checking that every value fits it."""
    if dtype.kind == "b":
        low, high = 0, 1
    else:
        low, high = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    if array.size and (array.min() < low or array.max() > high):
        raise UserError(
            f"--like {label}: tensor {name!r} holds values in "
            f"[{array.min()}, {array.max()}], outside {dtype}'s [{low}, {high}]"
        )
    return array.astype(dtype)


def describe_bitstream(bitstream: bytes) -> dict[str, Any]:
    """Summarise a bitstream: its units, and per coded tensor shape, qp and size.

    Bits per parameter count the whole NDU (header and payload) of a tensor; the
    totals count every byte of the stream, start, parameter-set and topology
    units included.
    """
    units = _codec().inspect(bitstream)
    unit_rows: list[dict[str, Any]] = []
    tensor_rows: list[dict[str, Any]] = []
    for index, unit in enumerate(units):
        fields = dict(unit.get("fields") or {})
        unit_type = _unit_type_name(unit.get("type"))
        unit_rows.append(
            {
                "index": index,
                "type": unit_type,
                "offset": int(unit.get("offset", 0)),
                "bytes": int(unit.get("size", 0)),
                # Everything else inspect() reports (profile, qp_density, node
                # ids, TCA and parent flags, ...), for --json.
                "fields": {
                    key: value
                    for key, value in {**fields, **unit}.items()
                    if key not in ("index", "type", "offset", "size", "fields")
                },
            }
        )
        if unit_type != "NDU":
            continue
        shape = _first_field(fields, unit, ("tensor_dimensions", "shape", "dims"))
        shape = [int(v) for v in shape] if shape is not None else []
        num_params = int(np.prod(shape)) if shape else 0
        unit_bytes = int(unit.get("size", 0))
        tensor_rows.append(
            {
                "name": _first_field(fields, unit, ("topology_elem_id", "name")),
                "shape": shape,
                "payload_type": _payload_type_name(
                    _first_field(
                        fields,
                        unit,
                        ("nnr_compressed_data_unit_payload_type", "payload_type"),
                    )
                ),
                "qp": _first_field(fields, unit, ("qp", "quantization_parameter")),
                "dq": _first_field(fields, unit, ("dq_flag", "dq")),
                "scan_order": _first_field(fields, unit, ("scan_order",)),
                "bytes": unit_bytes,
                "payload_bytes": _first_field(fields, unit, ("payload_size",)),
                "params": num_params,
                "bits_per_param": 8 * unit_bytes / num_params if num_params else None,
            }
        )
    total_bytes = len(bitstream)
    total_params = sum(row["params"] for row in tensor_rows)
    return {
        "bytes": total_bytes,
        "units": unit_rows,
        "tensors": tensor_rows,
        "params": total_params,
        "bits_per_param": 8 * total_bytes / total_params if total_params else None,
    }


_UNIT_TYPES = {0: "STR", 1: "MPS", 2: "LPS", 3: "TPL", 4: "QNT", 5: "NDU", 6: "AGG"}
_PAYLOAD_TYPES = {0: "INT", 1: "FLOAT", 2: "RAW_FLOAT", 3: "BLOCK"}


def _unit_type_name(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return _UNIT_TYPES.get(int(value), str(value))
    text = str(value).upper()
    return text.removeprefix("NNR_")


def _payload_type_name(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return _PAYLOAD_TYPES.get(int(value), str(value))
    return str(value).upper().removeprefix("NNR_PT_")


def _first_field(fields: dict, unit: dict, names: Sequence[str]) -> Any:
    for name in names:
        if name in fields:
            return fields[name]
        if name in unit:
            return unit[name]
    return None


def command_info(args: argparse.Namespace) -> int:
    """Print the units and tensors of a bitstream as a table or JSON."""
    bitstream = model_io.read_bytes(args.input)
    try:
        summary = describe_bitstream(bitstream)
    except _format_error() as error:
        raise UserError(_corrupt_stream_message(args.input, bitstream, error)) from None
    except ValueError as error:
        raise UserError(f"{args.input}: cannot read: {error}") from None

    if args.json:
        print(
            json.dumps(
                {"file": str(args.input), **summary}, indent=2, default=_json_default
            )
        )
        return EXIT_OK

    print(f"{args.input}: {summary['bytes']:,} bytes, {len(summary['units'])} units")
    for unit in summary["units"]:
        if unit["type"] != "NDU":
            print(
                f"  {unit['type']:<4} at {unit['offset']:>10,}: {unit['bytes']:,} bytes"
            )
    name_width = max([6] + [len(str(row["name"])) for row in summary["tensors"]])
    header = (
        f"  {'tensor':<{name_width}}  {'shape':<16} {'type':<5} {'qp':>5} {'dq':>3} "
        f"{'scan':>4} {'bytes':>12} {'params':>12} {'bits/param':>10}"
    )
    print(header)
    for row in summary["tensors"]:
        shape = "x".join(str(v) for v in row["shape"]) or "-"
        bits = (
            f"{row['bits_per_param']:.3f}" if row["bits_per_param"] is not None else "-"
        )
        payload_type = row["payload_type"] or "-"
        print(
            f"  {str(row['name']):<{name_width}}  {shape:<16} {payload_type:<5} "
            f"{_or_dash(row['qp']):>5} {_or_dash(row['dq']):>3} "
            f"{_or_dash(row['scan_order']):>4} {row['bytes']:>12,} "
            f"{row['params']:>12,} {bits:>10}"
        )
    total_bits = (
        f"{summary['bits_per_param']:.3f}"
        if summary["bits_per_param"] is not None
        else "-"
    )
    print(
        f"  {'total':<{name_width}}  {'':<16} {'':<5} {'':>5} {'':>3} {'':>4} "
        f"{summary['bytes']:>12,} {summary['params']:>12,} {total_bits:>10}"
    )
    return EXIT_OK


def _or_dash(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


_COMMANDS = {"encode": command_encode, "decode": command_decode, "info": command_info}


def _dash_option_names(argv: Sequence[str]) -> list[str]:
    """Accept NNCodec's underscore spellings: ``--use_dq`` -> ``--use-dq``."""
    normalised = []
    for token in argv:
        if token.startswith("--") and "_" in token.split("=", 1)[0]:
            name, sep, value = token.partition("=")
            token = name.replace("_", "-") + sep + value
        normalised.append(token)
    return normalised


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_dash_option_names(argv))
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="flwr-nncodec: %(message)s",
    )
    try:
        return _COMMANDS[args.command](args)
    except (UserError, model_io.ModelFileError) as error:
        print(f"flwr-nncodec {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"flwr-nncodec {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
