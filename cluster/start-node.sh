#!/usr/bin/env bash
# cluster/start-node.sh head [OPTIONS] | worker HEAD:PORT [OPTIONS]
# The same as `bin/cluster up [OPTIONS]` / `bin/cluster join HEAD:PORT [OPTIONS]` (kept for scripts
# that call it): they declare the GPU type (NVML's; plans ask for it with `gpu_type:`), turn token
# auth on, bind the dashboard to 127.0.0.1 and stop with `bin/cluster down`. The environment
# overrides this script always took still apply: GPU_TYPE, NUM_GPUS, DASHBOARD_HOST, RAY_PORT.
set -euo pipefail
bin="$(cd "$(dirname "$0")/../bin" && pwd)"
role="${1:?usage: start-node.sh head|worker HEAD:PORT [options of bin/cluster up|join]}"; shift
args=()
[ -z "${GPU_TYPE:-}" ] || args+=(--gpu-type "$GPU_TYPE")
[ -z "${NUM_GPUS:-}" ] || args+=(--gpus "$NUM_GPUS")
case "$role" in
  head)
    [ -z "${DASHBOARD_HOST:-}" ] || args+=(--dashboard-host "$DASHBOARD_HOST")
    [ -z "${RAY_PORT:-}" ] || args+=(--port "$RAY_PORT")
    exec "$bin/cluster" up "${args[@]}" "$@" ;;
  worker)
    head="${1:?a worker needs the head address HOST:PORT}"; shift
    exec "$bin/cluster" join "$head" "${args[@]}" "$@" ;;
  *)
    echo "start-node.sh: head or worker, not $role" >&2; exit 2 ;;
esac
