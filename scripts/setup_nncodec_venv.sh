#!/usr/bin/env bash
# Create (or refresh) the side venv that holds the reference NNCodec 2.1.3 next to
# this repo's package, for the interop tests and tools/make_vectors.py.
#
#   bash scripts/setup_nncodec_venv.sh [DIR]      (default DIR: .venv-nncodec)
#
# NNCodec needs numpy<2; flwr-nncodec supports numpy 1.26, so both live here.
# Safe to run again: an existing venv is reused and pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:-.venv-nncodec}
python=${PYTHON:-python3}

if [ -x "$venv/bin/python" ]; then
  echo "[nncodec-venv] reusing $venv ($("$venv/bin/python" --version))"
else
  echo "[nncodec-venv] creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi

# torch is pinned: an unpinned torch would pull a multi-GB CUDA build.
echo "[nncodec-venv] installing numpy<2, torch==2.13.0, nncodec==2.1.3," \
  "pytest, hypothesis"
"$venv/bin/pip" install -q "numpy<2" "torch==2.13.0" "nncodec==2.1.3" \
  "pytest>=7" "hypothesis>=6"

echo "[nncodec-venv] building and installing flwr-nncodec from this checkout"
# A throw-away build folder: build/ belongs to the editable dev install.
"$venv/bin/pip" install -q . -C build-dir=

# The torchvision wheel pip resolves for torch 2.13.0 is a CUDA build whose
# compiled ops do not load next to the CPU torch; NNCodec only imports it.
# tools/make_vectors.py and tests/conftest.py import NNCodec around that.
echo "[nncodec-venv] checking imports"
"$venv/bin/python" -P - <<'EOF'
import os
import sys

sys.path.insert(0, os.path.abspath("tools"))
import make_vectors

make_vectors.import_nncodec_compression()
import numpy
import flwr_nncodec
import flwr_nncodec._core  # noqa: F401

print(f"[nncodec-venv] ok: numpy {numpy.__version__}, nncodec importable, "
      f"flwr_nncodec from {flwr_nncodec.__file__}")
EOF
