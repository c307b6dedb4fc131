"""Read and write model parameter files: ``.pt``, ``.npz`` and ``.safetensors``.

Every reader returns an ordered ``dict[str, np.ndarray]`` (file order), every
writer takes one. Nothing here unpickles: ``.pt`` files are opened with
``torch.load(weights_only=True)``, ``.npz`` files with ``allow_pickle=False``.
torch and safetensors are optional; they are imported only for their formats.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

SUPPORTED_SUFFIXES = (".pt", ".pth", ".npz", ".safetensors")

logger = logging.getLogger(__name__)


class LoadedParameters(dict):
    """load_parameters()'s name -> array dict, with the tensors' size in the
    file's own dtypes (bfloat16 and float8 tensors are widened to float32,
    which numpy has; their arrays are larger than the file's data)."""

    source_nbytes: int = 0


class ModelFileError(Exception):
    """A parameter file could not be read or written; the message names the file."""


def file_format(path: str | os.PathLike) -> str:
    """The format of ``path`` from its suffix: "torch", "npz" or "safetensors"."""
    suffix = Path(path).suffix.lower()
    if suffix in (".pt", ".pth"):
        return "torch"
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    raise ModelFileError(
        f"{path}: unsupported file extension {suffix or '(none)'!r}; "
        f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def load_parameters(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a parameter file into an ordered name -> numpy array dict.

    Raises ModelFileError naming the file for a missing file, an unsupported
    extension, a corrupt file, or content that is not a flat name -> tensor map.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a parameter file")
    kind = file_format(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a regular file")

    sizes: dict[str, int] = {}
    if kind == "torch":
        params = _load_torch(path, sizes)
    elif kind == "npz":
        params = _load_npz(path)
    else:
        params = _load_safetensors(path, sizes)

    if not params:
        raise ModelFileError(f"{path}: the file holds no tensors")
    loaded = LoadedParameters(params)
    loaded.source_nbytes = sum(
        sizes.get(name, array.nbytes) for name, array in params.items()
    )
    return loaded


# Float dtypes a decoded file can hold (NNC streams carry none: the coded
# values are reconstructed as float32).
FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def check_float_dtype(path: str | os.PathLike, float_dtype: str) -> str:
    """The format of ``path`` (file_format) after checking that it can hold
    float tensors as ``float_dtype`` here: ModelFileError naming what is
    missing otherwise (call it before long work whose result goes there)."""
    path = Path(path)
    kind = file_format(path)
    if float_dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"float_dtype must be one of {', '.join(FLOAT_DTYPES)}, got {float_dtype!r}"
        )
    if float_dtype == "bfloat16":
        if kind == "npz":
            raise ModelFileError(
                f"{path}: .npz cannot hold bfloat16 (numpy has no such dtype); write "
                ".pt or .safetensors, or choose float32 or float16"
            )
        _import_torch(path)
        if kind == "safetensors":
            _import_safetensors(path)
    return kind


def save_parameters(
    path: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    *,
    overwrite: bool = False,
    float_dtype: str = "float32",
) -> None:
    """Write ``params`` to ``path`` in the format its suffix names.

    Float arrays are stored as ``float_dtype`` (one of FLOAT_DTYPES; bfloat16
    needs PyTorch and a .pt or .safetensors file, since numpy has no
    bfloat16); integer arrays keep their dtype. Refuses to replace an
    existing file unless ``overwrite`` is true. The file is written to a
    temporary name first, so a failed write leaves no partial file.
    """
    path = Path(path)
    kind = check_float_dtype(path, float_dtype)
    _check_replaceable(path, overwrite)

    # np.asarray(order="C") keeps 0-d arrays 0-d (np.ascontiguousarray
    # would write them as shape (1,)).
    arrays = {name: np.asarray(value, order="C") for name, value in params.items()}
    if float_dtype == "float16":
        arrays = {
            name: _to_float16(path, name, value) for name, value in arrays.items()
        }
    bfloat16 = float_dtype == "bfloat16"

    def write(handle) -> None:
        if kind == "torch":
            _save_torch(handle, arrays, path, bfloat16)
        elif kind == "npz":
            _save_npz(handle, arrays)
        elif bfloat16:
            _save_safetensors_bfloat16(handle, arrays)
        else:
            _save_safetensors(handle, arrays, path)

    _write_via_temp(path, write, overwrite)


def _to_float16(path: Path, name: str, value: np.ndarray) -> np.ndarray:
    """A float array as float16; ModelFileError if a finite value does not fit."""
    if value.dtype.kind != "f":
        return value
    largest = float(np.max(np.abs(value))) if value.size else 0.0
    if largest > float(np.finfo(np.float16).max):
        raise ModelFileError(
            f"{path}: tensor {name!r} holds values up to {largest:.4g}, beyond "
            "float16's 65504; choose float32 or bfloat16"
        )
    return value.astype(np.float16)


def _write_via_temp(path: Path, write, overwrite: bool = True) -> None:
    """Run ``write(handle)`` on a fresh temp file beside ``path``, then move it
    onto ``path``: with ``overwrite`` by os.replace (a symlink at ``path`` is
    replaced, not followed), without it by os.link, which refuses any
    existing name. A failed write therefore never leaves a partial file.

    The temp file is made with O_EXCL (mkstemp), never at a predictable name
    a planted symlink could redirect; it is removed if anything fails.
    """
    _check_replaceable(path, overwrite)
    try:
        # The name's first 64 characters keep the temp name within NAME_MAX.
        fd, temp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name[:64]}.", suffix=".partial"
        )
    except OSError as error:
        raise ModelFileError(
            f"{path}: cannot write: {error.strerror or error}"
        ) from None
    temp_path = Path(temp_name)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        if overwrite:
            os.replace(temp_path, path)
        else:
            _link_without_clobbering(temp_path, path)
    except FileExistsError:
        raise ModelFileError(
            f"{path}: file exists (use --force to overwrite it)"
        ) from None
    except OSError as error:
        raise ModelFileError(
            f"{path}: cannot write: {error.strerror or error}"
        ) from None
    except RuntimeError as error:
        # PyTorch's zip writer reports a full disk as a RuntimeError.
        raise ModelFileError(f"{path}: cannot write: {error}") from None
    finally:
        if temp_path.exists():
            temp_path.unlink()


def _link_without_clobbering(temp_path: Path, path: Path) -> None:
    """Give the finished temp file the name ``path`` unless that name exists
    (FileExistsError). Where the file system has no hard links, fall back to
    a check and a rename."""
    try:
        os.link(temp_path, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(temp_path, path)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(
    path: str | os.PathLike, data: bytes, *, overwrite: bool = False
) -> None:
    """Write ``data`` to ``path``, refusing to replace a file unless ``overwrite``.

    Written through a temp file (``_write_via_temp``): a failed write leaves
    nothing behind, an existing file or symlink is refused without
    ``overwrite`` and replaced, not written through, with it.
    """
    path = Path(path)
    if overwrite and _is_stream_device(path):
        # /dev/null, a terminal, a FIFO: write into it; never replace the node.
        try:
            with open(path, "wb") as handle:
                handle.write(data)
        except OSError as error:
            raise ModelFileError(
                f"{path}: cannot write: {error.strerror or error}"
            ) from None
        return
    _write_via_temp(path, lambda handle: handle.write(data), overwrite)


def _is_stream_device(path: Path) -> bool:
    """Whether ``path`` is a character device or a FIFO (symlinks followed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """ModelFileError when ``path`` exists and ``overwrite`` is false, or when
    it exists as neither a regular file nor a symlink (a device, a FIFO, a
    socket): replacing such a node is never what was meant."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # nothing there (yet)
    if not overwrite:
        raise ModelFileError(f"{path}: file exists (use --force to overwrite it)")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise ModelFileError(f"{path}: not a regular file; refusing to replace it")


# Largest bitstream file read whole into memory (4 GiB).
MAX_BITSTREAM_BYTES = 1 << 32


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_BITSTREAM_BYTES) -> bytes:
    """Read a whole regular file of at most ``max_bytes``, raising
    ModelFileError naming it when that fails (devices, FIFOs and oversized
    files are refused before reading)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a bitstream file")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before the
        # check below refuses it (reads of a regular file are unaffected).
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ModelFileError(f"{path}: not a regular file")
            if info.st_size > max_bytes:
                raise ModelFileError(
                    f"{path}: {info.st_size:,} bytes, more than the "
                    f"{max_bytes:,} read at most"
                )
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise ModelFileError(
            f"{path}: cannot read: {error.strerror or error}"
        ) from None
    if len(data) > max_bytes:  # the file grew while being read
        raise ModelFileError(f"{path}: more than the {max_bytes:,} bytes read at most")
    return data


# ---------------------------------------------------------------------------
# torch (.pt / .pth)


def _import_torch(path: Path):
    try:
        import torch
    except ImportError:
        raise ModelFileError(
            f"{path}: reading or writing .pt files needs PyTorch "
            "(pip install 'flwr-nncodec[torch]')"
        ) from None
    return torch


def _load_torch(path: Path, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    torch = _import_torch(path)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path}: not a PyTorch weights file (no zip archive: corrupt, truncated, "
            "or saved in the legacy format)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged archives
        # weights_only=True refuses any object outside tensors and plain
        # containers with an UnpicklingError (matched by name: no pickle here).
        if type(error).__name__ == "UnpicklingError":
            raise ModelFileError(
                f"{path}: holds objects other than tensors and plain containers "
                "(only state dicts are read; nothing is unpickled)"
            ) from None
        lines = str(error).strip().splitlines()
        raise ModelFileError(
            f"{path}: damaged PyTorch weights file "
            f"({type(error).__name__}: {lines[0] if lines else 'no detail'})"
        ) from None

    if hasattr(state, "state_dict") and not isinstance(state, Mapping):
        raise ModelFileError(
            f"{path}: holds a whole module; save its state_dict() instead"
        )
    if not isinstance(state, Mapping):
        raise ModelFileError(
            f"{path}: holds a {type(state).__name__}, expected a state dict "
            "(a mapping of names to tensors)"
        )

    params: dict[str, np.ndarray] = {}
    widened: dict[str, list[str]] = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise ModelFileError(f"{path}: key {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor "
                "(nested state dicts are not supported)"
            )
        problem = _torch_tensor_problem(value)
        if problem is not None:
            raise ModelFileError(f"{path}: tensor {name!r} {problem}")
        params[name] = _torch_to_numpy(value, name, sizes, widened)
    _log_widened(path, widened)
    return params


def _torch_tensor_problem(tensor) -> str | None:
    """Why a torch tensor cannot be read as a plain array, or None."""
    import torch

    if tensor.is_quantized:
        return (
            f"is quantized ({tensor.dtype}); dequantize it (tensor.dequantize()) "
            "before coding"
        )
    if tensor.layout != torch.strided:
        return (
            f"has layout {tensor.layout} ({tensor.dtype}); store it dense "
            "(tensor.to_dense()) before coding"
        )
    if tensor.is_meta:
        return f"is a meta tensor ({tensor.dtype}) and holds no values"
    if tensor.is_complex():
        return f"has dtype {tensor.dtype}; only real tensors can be coded"
    return None


def _torch_to_numpy(
    tensor, name: str, sizes: dict[str, int], widened: dict[str, list[str]]
) -> np.ndarray:
    """A torch tensor as a numpy array; bfloat16 and float8 (which numpy lacks)
    widened to float32, exactly, and listed in ``widened`` by dtype.
    ``sizes[name]``: its bytes in the file."""
    import torch

    tensor = tensor.detach().cpu()
    sizes[name] = tensor.element_size() * tensor.numel()
    if tensor.is_floating_point() and (
        tensor.dtype == torch.bfloat16 or "float8" in str(tensor.dtype)
    ):
        widened.setdefault(str(tensor.dtype).replace("torch.", ""), []).append(name)
        tensor = tensor.to(torch.float32)
    return tensor.contiguous().numpy().copy()


def _log_widened(path: Path, widened: dict[str, list[str]]) -> None:
    """One info line per dtype that _torch_to_numpy widened to float32."""
    for dtype, names in widened.items():
        shown = ", ".join(repr(n) for n in names[:3]) + (
            ", ..." if len(names) > 3 else ""
        )
        logger.info(
            "%s: %d %s tensor(s) converted to float32 (%s)",
            path,
            len(names),
            dtype,
            shown,
        )


def _save_torch(
    handle, arrays: dict[str, np.ndarray], path: Path, bfloat16: bool = False
) -> None:
    torch = _import_torch(path)
    state = {name: torch.from_numpy(array.copy()) for name, array in arrays.items()}
    if bfloat16:
        state = _floats_to_bfloat16(state)
    torch.save(state, handle)


def _floats_to_bfloat16(state: dict) -> dict:
    """Float tensors of ``state`` rounded to bfloat16; the others as they are."""
    import torch

    return {
        name: tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
    }


# ---------------------------------------------------------------------------
# numpy (.npz)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a valid .npz archive (not a zip file)")
    try:
        return _read_npz_members(path)
    except (zipfile.BadZipFile, EOFError) as error:
        raise ModelFileError(f"{path}: not a valid .npz archive ({error})") from None
    except ValueError as error:
        # numpy raises ValueError for object arrays (which would need pickle) and
        # for malformed .npy members.
        raise ModelFileError(
            f"{path}: unreadable array in .npz archive ({error})"
        ) from None
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read: {error}") from None


def _read_npz_members(path: Path) -> dict[str, np.ndarray]:
    """Every member of an .npz archive, named as written (".npy" dropped),
    read without pickle; any tensor name round-trips with :func:`_save_npz`."""
    params: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = info.filename.removesuffix(".npy")
            if name in params:
                raise ModelFileError(f"{path}: tensor {name!r} occurs twice")
            with archive.open(info) as member:
                params[name] = np.lib.format.read_array(member, allow_pickle=False)
    return params


def _save_npz(handle, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz archive member by member (what np.load reads), so that
    names such as ``file`` or ``allow_pickle`` need no keyword argument."""
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


# ---------------------------------------------------------------------------
# safetensors


# The safetensors header keeps no tensor order; we store ours in its metadata so
# that a decoded file re-encodes with the same NDU order.
_ORDER_METADATA_KEY = "flwr_nncodec.tensor_order"


def _import_safetensors(path: Path):
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise ModelFileError(
            f"{path}: reading or writing .safetensors files needs the safetensors "
            "package (pip install 'flwr-nncodec[io]')"
        ) from None
    return safetensors


def _load_safetensors(path: Path, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    safetensors = _import_safetensors(path)
    try:
        with safetensors.safe_open(str(path), framework="numpy") as handle:
            names = list(handle.keys())
            metadata = handle.metadata() or {}
            params = {name: handle.get_tensor(name) for name in names}
    except (TypeError, AttributeError) as error:
        # numpy has no bfloat16 or float8: read through torch when it is present.
        text = str(error).lower()
        if not any(word in text for word in ("bf16", "bfloat16", "float8", "f8_")):
            raise ModelFileError(
                f"{path}: not a valid safetensors file ({error})"
            ) from None
        params, metadata = _load_safetensors_via_torch(path, sizes)
    except Exception as error:  # SafetensorError does not derive from a stdlib type
        raise ModelFileError(
            f"{path}: not a valid safetensors file ({error})"
        ) from None
    return _apply_stored_order(params, metadata)


def _apply_stored_order(
    params: dict[str, np.ndarray], metadata: dict[str, str]
) -> dict[str, np.ndarray]:
    """Reorder ``params`` as the metadata's name list says, if it names them all."""
    try:
        order = json.loads(metadata.get(_ORDER_METADATA_KEY, "null"))
    except ValueError:
        return params
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(params):
        return params
    return {name: params[name] for name in order}


def _load_safetensors_via_torch(
    path: Path, sizes: dict[str, int]
) -> tuple[dict[str, np.ndarray], dict]:
    _import_torch(path)
    import safetensors

    widened: dict[str, list[str]] = {}
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            params = {
                name: _torch_to_numpy(handle.get_tensor(name), name, sizes, widened)
                for name in handle.keys()
            }
    except Exception as error:
        raise ModelFileError(
            f"{path}: not a valid safetensors file ({error})"
        ) from None
    _log_widened(path, widened)
    return params, metadata


def _save_safetensors(handle, arrays: dict[str, np.ndarray], path: Path) -> None:
    safetensors = _import_safetensors(path)
    metadata = {_ORDER_METADATA_KEY: json.dumps(list(arrays))}
    handle.write(safetensors.numpy.save(arrays, metadata=metadata))


def _save_safetensors_bfloat16(handle, arrays: dict[str, np.ndarray]) -> None:
    """.safetensors with the float tensors in bfloat16 (through PyTorch)."""
    import safetensors.torch
    import torch

    state = {name: torch.from_numpy(array.copy()) for name, array in arrays.items()}
    metadata = {_ORDER_METADATA_KEY: json.dumps(list(arrays))}
    handle.write(safetensors.torch.save(_floats_to_bfloat16(state), metadata=metadata))
