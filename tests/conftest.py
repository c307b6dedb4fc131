"""Shared test fixtures and helpers.

Conformance vectors (tests/vectors/, written by tools/make_vectors.py with the
reference NNCodec 2.1.3) are exposed through ``vector_manifest`` and
``load_vector_arrays``; the interop suite imports NNCodec through
``import_nncodec_compression``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = REPO_ROOT / "tests" / "vectors"


def find_shared_file(name: str) -> Path | None:
    """A file of the team's shared facts folder, or None when it is absent.

    Looked up in ``$NNC_SHARED_DIR``, then ``shared/`` beside the checkout (as
    CI lays it), then ``/work/shared``.
    """
    candidates = [os.environ.get("NNC_SHARED_DIR"), REPO_ROOT.parent / "shared",
                  "/work/shared"]
    for folder in candidates:
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def _prefer_installed_package() -> None:
    """Let a regular (non-editable) install win over the bare source tree.

    ``python -m pytest`` puts the working directory first on sys.path. In the
    NNCodec side venv flwr-nncodec is installed with ``pip install .``, and the
    source tree's ``flwr_nncodec`` (no compiled ``_core``) would shadow it.
    Only when ``_core`` does not import and another copy of the package is
    installed do we drop the repository root from sys.path.
    """
    try:
        importlib.import_module("flwr_nncodec._core")
        return
    except ImportError:
        pass

    spec = importlib.util.find_spec("flwr_nncodec")
    if spec is None or spec.origin is None:
        return
    if Path(spec.origin).resolve().parent != REPO_ROOT / "flwr_nncodec":
        return

    saved_path = list(sys.path)
    sys.path[:] = [p for p in sys.path
                   if p not in ("", ".") and Path(p).resolve() != REPO_ROOT]
    importlib.invalidate_caches()
    installed = importlib.util.find_spec("flwr_nncodec")
    if installed is None or installed.origin is None:
        sys.path[:] = saved_path
        return
    for name in [k for k in sys.modules
                 if k == "flwr_nncodec" or k.startswith("flwr_nncodec.")]:
        del sys.modules[name]


_prefer_installed_package()


def load_manifest() -> dict:
    with open(VECTORS_DIR / "manifest.json") as f:
        return json.load(f)


def load_vector_arrays(entry: dict) -> dict[str, np.ndarray]:
    """The vector's npz as a plain dict (pickle refused)."""
    with np.load(VECTORS_DIR / entry["arrays"], allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def tensors_with_prefix(arrays: dict, prefix: str) -> dict[str, np.ndarray]:
    """{tensor name: array} for keys ``prefix + name``, e.g. prefix 's1:in:'."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def codec_options(entry: dict) -> dict:
    """The vector's options for flwr_nncodec.encode (NNCodec-only keys removed)."""
    options = dict(entry["options"])
    options.pop("nncodec_codebook_mode", None)
    options.pop("update_base", None)
    return options


def assert_bit_exact(actual, expected, where: str, levels=None) -> None:
    """Equal shape and equal values, float32 compared bit for bit.

    ``expected`` may be float64 (NNCodec returns codebook tensors as float64);
    then ``actual`` must equal it exactly once widened. ``levels`` (the
    reference's integers) is quoted at the first mismatch to help narrowing.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{where}: shape {actual.shape} != reference {expected.shape}")

    if expected.dtype.kind in "iu":
        assert actual.dtype.kind in "iu", (
            f"{where}: dtype {actual.dtype}, reference is integer {expected.dtype}")
        mismatch = actual.astype(np.int64) != expected.astype(np.int64)
    elif actual.dtype == np.float32 and expected.dtype == np.float32:
        mismatch = actual.view(np.uint32) != expected.view(np.uint32)
    else:
        assert actual.dtype.kind == "f", (
            f"{where}: dtype {actual.dtype}, reference is float {expected.dtype}")
        mismatch = actual.astype(np.float64) != expected.astype(np.float64)

    if mismatch.any():
        index = np.unravel_index(int(np.argmax(mismatch)), mismatch.shape)
        flat = int(np.ravel_multi_index(index, mismatch.shape)) if mismatch.ndim else 0
        detail = ""
        if levels is not None:
            detail = f", reference integer {np.asarray(levels).reshape(-1)[flat]}"
        raise AssertionError(
            f"{where}: {int(mismatch.sum())} of {mismatch.size} values differ; "
            f"first at {tuple(int(i) for i in index)} (flat {flat}): "
            f"{actual[index]!r} != reference {expected[index]!r}{detail}")


def import_nncodec_compression():
    """``nncodec.nnc.compression`` of the side venv, or skip the test."""
    pytest.importorskip("nncodec")
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import make_vectors
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    return make_vectors.import_nncodec_compression()


@pytest.fixture(scope="session")
def vector_manifest() -> dict:
    return load_manifest()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (``CI=true``) an end-to-end test may not skip itself.

    The ``slow`` tests skip on a developer machine without a private network
    namespace; in CI that would hide a broken set-up, so the skip becomes a
    failure that names the reason.
    """
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or item.get_closest_marker("slow") is None:
        return
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, which must run end-to-end tests: {report.longrepr}"
