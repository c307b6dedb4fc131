#!/usr/bin/env bash
# Create .venv with flwr-nncodec (built from this checkout), Flower, PyTorch 2.13.0
# and everything the tests, apps and benchmarks use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$python" -m venv "$venv"
fi

# torch is pinned: an unpinned torch would pull a multi-GB CUDA build. The pin
# does not choose the CPU build; pip takes whichever build its index serves
# (README: install the CPU wheel first where that is a CUDA one).
echo "[setup] installing torch==2.13.0 (the build pip's index serves)"
"$venv/bin/pip" install -q torch==2.13.0

echo "[setup] building and installing flwr-nncodec (C++ core via scikit-build-core)"
"$venv/bin/pip" install -q -e ".[flower,io,v2x,test]"

"$venv/bin/python" -c "import flwr_nncodec._core, flwr; print('[setup] ok: flwr', flwr.__version__)"
