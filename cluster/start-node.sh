#!/usr/bin/env bash
# cluster/start-node.sh head|worker [HEAD_ADDRESS]
# Starts Ray on this server and declares its GPU type (accelerator_type:<TYPE>, e.g. H20, A100) so
# plans can ask for `gpu_type:`. The type comes from NVML unless GPU_TYPE is set.
# The dashboard binds to 127.0.0.1 unless DASHBOARD_HOST says otherwise (reach it over ssh -L).
set -euo pipefail
source "$(dirname "$0")/../bin/_bootstrap"
role="${1:?usage: start-node.sh head|worker [HEAD_ADDRESS]}"
read -r gpus detected < <(python -m launcher.nodeinfo)
type="${GPU_TYPE:-$detected}"
gpus="${NUM_GPUS:-$gpus}"   # override for a test head with logical GPUs
args=(--num-gpus "$gpus" --disable-usage-stats)
if [ -n "$type" ] && [ "$type" != "none" ]; then
  args+=(--resources "{\"accelerator_type:$type\": 1}")
fi
if [ "$role" = head ]; then
  exec ray start --head --port "${RAY_PORT:-6379}" --dashboard-host "${DASHBOARD_HOST:-127.0.0.1}" "${args[@]}"
else
  exec ray start --address "${2:?worker needs the head address HOST:PORT}" "${args[@]}"
fi
