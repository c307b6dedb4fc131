#!/usr/bin/env bash
# Berlin V2X / EuCNC 2025 reproduction: run the Flower app with `flwr run`.
#
# Usage: scripts/run_berlin_v2x.sh [--preset cpu|smoke|paper] [--mode compare|nnc|float32]
#                                  [--results-dir DIR] [key=value ...]
# Extra key=value pairs are run-config overrides (TOML values, e.g. qp=-20).
# As root with `unshare` available, everything runs inside a loopback-only
# network namespace; otherwise directly (binding 127.0.0.1 only).
# Prints the final accuracies and the traffic reduction at the end.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APP="$REPO/simulations/berlin_v2x"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
BIN="$(dirname "$PYTHON")"

preset="cpu"
mode="compare"
results_dir="$REPO/results/berlin_v2x"
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --results-dir) results_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "run_berlin_v2x.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$results_dir"
results_dir="$(cd "$results_dir" && pwd)"

# The run config as one TOML string; strings are quoted, overrides verbatim.
run_config="preset=\"$preset\" mode=\"$mode\" results-dir=\"$results_dir\""
for item in "${overrides[@]}"; do run_config+=" $item"; done

# Check the run config before Flower starts: a bad preset, mode or value is
# refused in a second, with the app's own message, not 20 s later inside the
# ServerApp. One TOML line per key (paths may hold spaces).
config_lines=("preset=\"$preset\"" "mode=\"$mode\"" "results-dir=\"$results_dir\"")
config_lines+=("${overrides[@]}")
if ! PYTHONPATH="$REPO/simulations/berlin_v2x" "$PYTHON" - "${config_lines[@]}" <<'PYEOF'
import sys
import tomllib

from berlin_v2x.config import resolve

try:
    resolve(tomllib.loads("\n".join(sys.argv[1:])))
except (ValueError, TypeError, tomllib.TOMLDecodeError) as error:
    sys.exit(f"run_berlin_v2x.sh: {error}")
PYEOF
then
  exit 2
fi

federation="num-supernodes=5"
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  federation+=" client-resources-num-gpus=0.2"
fi

# A private Flower home: its managed SuperLink is ours alone, found by path.
flwr_home="$(mktemp -d "${TMPDIR:-/tmp}/flwr-home-v2x.XXXXXX")"
export FLWR_HOME="$flwr_home" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PATH="$BIN:$PATH"

inner_script='
set -euo pipefail
if [[ "${V2X_IN_NAMESPACE:-0}" == 1 ]]; then ip link set lo up; fi
status=0
flwr run "$APP" --stream --run-config "$RUN_CONFIG" --federation-config "$FEDERATION" || status=$?
flwr ls --format json > "$RESULTS_DIR/flwr_ls.json" 2>/dev/null || true
# Stop the managed SuperLink (and anything else started under our FLWR_HOME) by PID.
for proc in /proc/[0-9]*; do
  pid="${proc#/proc/}"
  if [[ "$pid" != "$$" ]] && tr "\0" " " < "$proc/cmdline" 2>/dev/null | grep -qF "$FLWR_HOME"; then
    kill "$pid" 2>/dev/null || true
  fi
done
exit "$status"
'
export APP RUN_CONFIG="$run_config" FEDERATION="$federation" RESULTS_DIR="$results_dir"

status=0
if [[ "$(id -u)" == 0 ]] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
  # With a PID namespace too, every process the run starts (SuperLink,
  # flwr-simulation, Ray workers) ends when the inner shell ends, even when
  # `flwr run` itself was killed or failed.
  pid_namespace=()
  if unshare -n -p -f --mount-proc true 2>/dev/null; then
    pid_namespace=(-p -f --mount-proc)
  fi
  V2X_IN_NAMESPACE=1 unshare -n "${pid_namespace[@]}" bash -c "$inner_script" || status=$?
else
  echo "run_berlin_v2x.sh: not root or no unshare; running without a private network namespace" >&2
  bash -c "$inner_script" || status=$?
fi
rm -rf "$flwr_home"

if [[ $status -ne 0 ]]; then
  echo "run_berlin_v2x.sh: flwr run failed with status $status" >&2
  exit "$status"
fi
if ! grep -q '"finished:completed"' "$results_dir/flwr_ls.json" 2>/dev/null; then
  echo "run_berlin_v2x.sh: the run did not finish as completed (see $results_dir/flwr_ls.json)" >&2
  exit 1
fi
"$PYTHON" - "$results_dir/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"\nBerlin V2X ({s['mode']}, preset {s['preset']}, {s['data']} data), results in {sys.argv[1].rsplit('/', 1)[0]}")
for codec, run in s["runs"].items():
    print(f"  {codec:8s} masked accuracy {run['masked_accuracy']:6.2f} %   top-1 (paper) "
          f"{run['top1_accuracy']:6.2f} %   traffic {run['bytes_total'] / 1e6:9.3f} MB   {run['runtime_s']:.0f} s")
print(f"  traffic of NNCFedAvg / float32 FedAvg: {100 * s['traffic_ratio']:.3f} % "
      f"(reduction {100 * (1 - s['traffic_ratio']):.2f} %)")
if "masked_accuracy_gap_pp" in s:
    print(f"  masked accuracy gap (float32 - NNC): {s['masked_accuracy_gap_pp']:+.2f} pp")
checks = s.get("acceptance", {})
if checks:
    verdict = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())
    print(f"  issue targets (meant for the cpu preset): {verdict}")
if s["preset"] == "smoke":
    print("  (smoke preset: 2 short rounds check the pipeline; the coded run has not"
          " started learning yet)")
PY
