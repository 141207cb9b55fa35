#!/usr/bin/env bash
# Multi-node torchrun around `python -m rlinf.launch`, rendezvous from Slurm or given explicitly.
#
#   # inside a Slurm allocation (batch script or salloc): one torchrun per node via srun
#   bash launch/torchrun.sh --config libero.yaml [key=value ...]
#   # explicit, on each of N machines (same master address and port everywhere):
#   bash launch/torchrun.sh --nnodes 2 --node-rank 0 --master-addr host0 --config libero.yaml
#   bash launch/torchrun.sh --nnodes 2 --node-rank 1 --master-addr host0 --config libero.yaml
#
# Options (each also read from the environment variable in brackets):
#   --nnodes N          [NNODES]          nodes (Slurm: the step's or job's node count; else 1)
#   --node-rank R       [NODE_RANK]       this node's rank (Slurm: SLURM_NODEID; else 0)
#   --nproc-per-node K  [NPROC_PER_NODE]  processes per node (default: from the config's plan)
#   --master-addr A     [MASTER_ADDR]     rendezvous host (Slurm: first node of the allocation)
#   --master-port P     [MASTER_PORT]     rendezvous port (Slurm: derived from the job id; 29500)
#   --python P          [RLINF_PYTHON]    interpreter (default: python)
#   --dry-run                             print the torchrun command, start nothing
# Node ranks are static (node i of the allocation is placement node i), so every node group
# lands where cluster.node_groups puts it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${RLINF_PYTHON:-python}
DRY=0
args=()
while (($#)); do
  case $1 in
    --nnodes) NNODES=$2; shift 2 ;;
    --node-rank) NODE_RANK=$2; shift 2 ;;
    --nproc-per-node) NPROC_PER_NODE=$2; shift 2 ;;
    --master-addr) MASTER_ADDR=$2; shift 2 ;;
    --master-port) MASTER_PORT=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ " ${args[*]-} " == *" --config "* ]] || { echo "torchrun.sh: --config X.yaml is required" >&2; exit 2; }

# In a batch script or salloc shell (a job, but no step yet): start one copy per node with srun.
if [[ -n ${SLURM_JOB_ID:-} && -z ${SLURM_STEP_ID:-} && $DRY == 0 ]]; then
  nodes=${NNODES:-${SLURM_JOB_NUM_NODES:-1}}
  exec srun --nodes="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash "$HERE/torchrun.sh" --python "$PY" "${args[@]}"
fi

if [[ -n ${SLURM_STEP_ID:-} ]]; then
  NNODES=${NNODES:-${SLURM_STEP_NUM_NODES:-${SLURM_JOB_NUM_NODES:-1}}}
  NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
  if [[ -z ${MASTER_ADDR:-} ]]; then
    MASTER_ADDR=$(scontrol show hostnames "${SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}" | head -n 1)
  fi
  MASTER_PORT=${MASTER_PORT:-$((20000 + (SLURM_JOB_ID * 16 + SLURM_STEP_ID) % 40000))}
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_PORT=${MASTER_PORT:-29500}

if [[ -z ${NPROC_PER_NODE:-} ]]; then
  # Processes per node come from the placement itself (the same on every node for torchrun).
  NPROC_PER_NODE=$(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "${args[@]}" <<'EOF'
import sys
from rlinf.config import load_config
from rlinf.dist.placement import resolve
a = sys.argv[1:]
i = a.index("--config")
cfg_name = a[i + 1]
overrides = [x for j, x in enumerate(a) if j not in (i, i + 1) and not x.startswith("--")]
counts = set(resolve(load_config(cfg_name, overrides).cluster).procs_per_node)
if len(counts) != 1:
    sys.exit("torchrun.sh: nodes run different process counts in this placement; launch with "
             "srun (python launch/hetero.py --launcher srun) or mpirun instead")
print(counts.pop())
EOF
  )
fi

if ((NNODES == 1)); then
  rdzv=(--standalone)
else
  [[ -n ${MASTER_ADDR:-} ]] || { echo "torchrun.sh: --master-addr (or MASTER_ADDR) is required for $NNODES nodes" >&2; exit 2; }
  rdzv=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
fi
cmd=("$PY" -m torch.distributed.run "${rdzv[@]}" --nproc-per-node "$NPROC_PER_NODE"
  -m rlinf.launch "${args[@]}")
echo "[torchrun.sh node $NODE_RANK/$NNODES] ${cmd[*]}" >&2
((DRY)) && exit 0
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${cmd[@]}"
