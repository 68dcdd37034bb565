#!/usr/bin/env bash
# srun ... cluster/slurm-node.sh head|worker HEAD_IP:PORT INDEX   (one task per node, from cluster/slurm.sbatch)
# This node's Ray for the length of the Slurm step: `bin/cluster up|join --foreground`, with what
# Slurm gave this node. Read here, inside the step, because SLURM_CPUS_ON_NODE and SLURM_GPUS_ON_NODE
# are this node's own and differ from the batch step's on other nodes. INDEX: the node's place in
# the job (SLURM_NODEID counts within the step, where every node is 0).
#   SL_SLURM_GPUS      GPUs to declare instead of SLURM_GPUS_ON_NODE (logical GPUs on a test machine)
#   SL_RAY_TOKEN       the token file (set by slurm.sbatch; shared storage or $HOME)
#   SL_CLUSTER_STATE   where bin/cluster keeps each node's records and Ray's files (set by slurm.sbatch)
#   SL_RAY_DASHBOARD   0: start no dashboard on the head
set -euo pipefail
usage="usage: slurm-node.sh head|worker HEAD_IP:PORT INDEX"
role="${1:?$usage}" addr="${2:?$usage}" index="${3:?$usage}"
bin="$(cd "$(dirname "$0")/../bin" && pwd)"
# Per node, not per address: Slurm nodes sharing one host (and address) must not share records;
# the index, not the node's name, keeps the path short (Ray's socket paths hold 107 bytes).
args=(--foreground --token "${SL_RAY_TOKEN:?}" --state-dir "${SL_CLUSTER_STATE:?}/$index"
      --num-cpus "${SLURM_CPUS_ON_NODE:?}" --gpus "${SL_SLURM_GPUS:-${SLURM_GPUS_ON_NODE:-0}}")
case "$role" in
  head)
    [ "${SL_RAY_DASHBOARD:-1}" != 0 ] || args+=(--no-dashboard)
    exec "$bin/cluster" up --node-ip "${addr%:*}" --port "${addr##*:}" "${args[@]}" ;;
  worker)
    exec "$bin/cluster" join "$addr" "${args[@]}" ;;
  *)
    echo "slurm-node.sh: head or worker, not $role" >&2; exit 2 ;;
esac
