#!/usr/bin/env bash
# Open MPI's mpirun around `python -m rlinf.launch`, with the process count and per-node layout
# taken from the config's placement.
#
#   bash launch/mpirun.sh --config check_4rank.yaml                  # one machine
#   bash launch/mpirun.sh --hostfile hosts --config libero.yaml      # listed machines
#   bash launch/mpirun.sh --config libero.yaml                       # inside a Slurm allocation
#
# Options:
#   --hostfile F         Open MPI hostfile (inside Slurm, the allocation is used by itself)
#   --python P           interpreter on every node (default: $RLINF_PYTHON or python)
#   --mpirun-args "..."  extra mpirun arguments, e.g. "--oversubscribe" or "-x NCCL_DEBUG=INFO"
#                        (also $RLINF_MPIRUN_ARGS)
#   --dry-run            print the command, start nothing
# On one machine (no hostfile, no Slurm allocation) --oversubscribe is added.
# When node groups give nodes their own interpreter or env vars, or nodes run different process
# counts, this hands over to `launch/hetero.py --launcher mpirun` (one MPMD context per node).
# The rendezvous address is agreed over MPI (mpi4py) at start-up: nothing to export by hand.
# Ranks are not pinned (--bind-to none): each rank runs several threads (torch, simulators).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${RLINF_PYTHON:-python}
EXTRA=${RLINF_MPIRUN_ARGS:-}
HOSTFILE=
DRY=0
args=()
while (($#)); do
  case $1 in
    --hostfile) HOSTFILE=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --mpirun-args) EXTRA="$EXTRA $2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ " ${args[*]-} " == *" --config "* ]] || { echo "mpirun.sh: --config X.yaml is required" >&2; exit 2; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# world size, processes per node ("-" if they differ), and whether node groups set an env
read -r WORLD PER_NODE HETERO < <("$PY" - "${args[@]}" <<'EOF'
import sys
from rlinf.config import load_config
from rlinf.dist.placement import resolve
a = sys.argv[1:]
i = a.index("--config")
overrides = [x for j, x in enumerate(a) if j not in (i, i + 1) and not x.startswith("--")]
plan = resolve(load_config(a[i + 1], overrides).cluster)
counts = set(plan.procs_per_node)
hetero = any(r.env_vars or r.python_interpreter_path for r in plan.ranks)
print(plan.world_size, counts.pop() if len(counts) == 1 else "-", int(hetero))
EOF
)
[[ -n ${WORLD:-} ]] || exit 2

if [[ -z $HOSTFILE && -z ${SLURM_JOB_ID:-} && " $EXTRA " != *" --oversubscribe "* ]]; then
  EXTRA="$EXTRA --oversubscribe"  # one machine: CPU-slot placements often exceed its cores
fi

if [[ $PER_NODE == - || $HETERO == 1 ]]; then
  echo "mpirun.sh: node groups set their own interpreter/env or process counts differ:" \
    "starting one MPMD context per node (launch/hetero.py --launcher mpirun)" >&2
  hosts=()
  if [[ -n $HOSTFILE ]]; then
    hosts=(--hosts "$(awk 'NF && $1 !~ /^#/ {print $1}' "$HOSTFILE" | paste -sd,)")
  fi
  plan=()
  ((DRY)) && plan=(--plan)
  exec "$PY" "$HERE/hetero.py" --launcher mpirun --python "$PY" "${hosts[@]}" "${plan[@]}" \
    --launcher-args "--bind-to none $EXTRA" "${args[@]}"
fi

# shellcheck disable=SC2206
cmd=(mpirun -n "$WORLD" --map-by "ppr:$PER_NODE:node" --bind-to none
  ${HOSTFILE:+--hostfile "$HOSTFILE"} $EXTRA "$PY" -m rlinf.launch "${args[@]}")
echo "[mpirun.sh] ${cmd[*]}" >&2
((DRY)) && exit 0
exec "${cmd[@]}"
