#!/usr/bin/env bash
# End-to-end run of simulations/quickstart with NNC-coded traffic, on loopback.
#
#   unshare -n bash scripts/flower_e2e.sh simulation|deployment WORKDIR [ROUNDS] [NODES]
#
# Must run inside its own network namespace (unshare -n): it brings up lo and
# binds only 127.0.0.1. It starts a SuperLink (and, for "deployment", SuperNodes)
# itself, runs the app with `flwr run`, saves `flwr ls --format json` to
# WORKDIR/ls.json and the app's history.json to WORKDIR/results/, and stops every
# server it started, by PID, on exit. FLWR_HOME is WORKDIR/flwr-home.
set -euo pipefail

mode=${1:?usage: flower_e2e.sh simulation|deployment WORKDIR [ROUNDS] [NODES]}
work=${2:?WORKDIR missing}
rounds=${3:-3}
nodes=${4:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
venv_bin=${VENV_BIN:-$repo/.venv/bin}

case "$mode" in simulation|deployment) ;; *) echo "unknown mode: $mode" >&2; exit 2 ;; esac
if ip -o addr show | grep -v ' lo ' | grep -q 'inet'; then
  echo "refusing to run: this network namespace has more than loopback" >&2
  exit 3
fi
ip link set lo up

mkdir -p "$work/results" "$work/logs"
export PATH="$venv_bin:$PATH"
export FLWR_HOME="$work/flwr-home"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export OMP_NUM_THREADS=1
mkdir -p "$FLWR_HOME"

superlink_port=9300
pids=()
descendants() {
  local child
  for child in $(pgrep -P "$1" || true); do
    descendants "$child"
    echo "$child"
  done
}
stop_all() {
  # The servers' children (flwr-serverapp, flwr-clientapp, flwr-simulation) first.
  local all=() pid
  for pid in "${pids[@]}"; do all+=($(descendants "$pid") "$pid"); done
  for pid in "${all[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${all[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 143' TERM INT

cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "e2e"

[superlink.e2e]
address = "127.0.0.1:$superlink_port"
insecure = true
EOF

superlink_args=(--insecure --host 127.0.0.1 --port "$superlink_port"
  --database "$work/state.db" --disable-runtime-dependency-installation)
if [ "$mode" = simulation ]; then
  superlink_args+=(--simulation)
fi
flower-superlink "${superlink_args[@]}" > "$work/logs/superlink.log" 2>&1 &
pids+=($!)

# Wait for the SuperLink's HTTP API.
for _ in $(seq 100); do
  if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$superlink_port/health', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done

federation_args=()
if [ "$mode" = deployment ]; then
  for i in $(seq 0 $((nodes - 1))); do
    flower-supernode --insecure --superlink "127.0.0.1:$superlink_port" \
      --host 127.0.0.1 --port $((9400 + i)) \
      --node-config "partition-id=$i num-partitions=$nodes" \
      > "$work/logs/supernode-$i.log" 2>&1 &
    pids+=($!)
  done
else
  federation_args=(--federation-config "num-supernodes=$nodes")
fi

start=$(date +%s)
timeout 170 flwr run "$repo/simulations/quickstart" e2e --stream "${federation_args[@]}" \
  --run-config "num-server-rounds=$rounds results-dir=\"$work/results\"" \
  > "$work/logs/flwr-run.log" 2>&1 || echo "flwr run exited with $?" >&2
echo "flwr run took $(( $(date +%s) - start )) s" > "$work/logs/timing.txt"

flwr ls e2e --format json > "$work/ls.json" 2> "$work/logs/flwr-ls.log"
