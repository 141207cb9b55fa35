#!/usr/bin/env bash
#SBATCH --job-name=rlinf-hetero
#SBATCH --nodes=18
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=USR1@120
#
# Embodied training on a heterogeneous cluster (configs/examples/hetero_18node.yaml): GPU node
# groups for actor and rollout, robot nodes for env, CPU agent processes; each node group
# starts under its own interpreter and env vars (cluster.node_groups[*].env_configs) through an
# `srun --multi-prog` file written by launch/hetero.py. Nodes run different process counts,
# so the step uses --distribution=arbitrary with a SLURM_HOSTFILE (written next to it).
#
#   sbatch slurm/train_embodied_hetero.sh [key=value ...]
#   RLINF_PLAN=1 bash slurm/train_embodied_hetero.sh   # dry run: rank map, per-node start, srun
#   CONFIG=my_cluster.yaml sbatch --nodes=4 slurm/train_embodied_hetero.sh
#
# The whole nodes are allocated (--exclusive) because the node groups differ in GPUs and CPUs;
# on a cluster whose node kinds are separate partitions, ask for them with Slurm's
# heterogeneous jobs (#SBATCH hetjob) in the same order as cluster.node_groups.
# SIGUSR1 two minutes before the time limit: checkpoint, requeue, resume (runner.resume_dir=auto).
# Knobs: see slurm/common.sh.
set -euo pipefail
# The repository: this script's parent, or (under sbatch, which runs a spool copy) the path
# Slurm recorded for the submitted script, or the submit directory. RLINF_ROOT overrides.
if [[ -z ${RLINF_ROOT:-} ]]; then
  RLINF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ ! -f $RLINF_ROOT/slurm/common.sh && -n ${SLURM_JOB_ID:-} ]]; then
    submitted=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    RLINF_ROOT=$(cd "$(dirname "${submitted:-.}")/.." 2>/dev/null && pwd || true)
    [[ -f $RLINF_ROOT/slurm/common.sh ]] || RLINF_ROOT=${SLURM_SUBMIT_DIR:-$PWD}
  fi
fi
# shellcheck source=slurm/common.sh
source "$RLINF_ROOT/slurm/common.sh"

CONFIG=${CONFIG:-examples/hetero_18node.yaml}
rlinf_setup
rlinf_hetero "${BASH_SOURCE[0]}" "$CONFIG" "$@"
