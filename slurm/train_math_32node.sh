#!/usr/bin/env bash
#SBATCH --job-name=rlinf-math-grpo
#SBATCH --nodes=32
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=USR1@120
#
# GRPO on math, 32 nodes x 8 GPUs: one task per GPU (256 ranks), every task running
# `python -m rlinf.launch` through srun (config: configs/math_grpo_32node.yaml).
#
#   sbatch slurm/train_math_32node.sh [key=value ...]
#   RLINF_PLAN=1 bash slurm/train_math_32node.sh       # dry run: 256-rank map + srun line
#   RLINF_MODULES="cuda/12.4 rlinf/reason" sbatch slurm/train_math_32node.sh
#
# Preemption and time limit: Slurm sends SIGUSR1 two minutes before the end (--signal), every
# rank finishes its step, the run checkpoints and requeues this job (scontrol requeue); when it
# starts again the same command resumes from the newest checkpoint (runner.resume_dir=auto).
# The output file is appended to (--open-mode=append), so one file tells the whole story.
# Each task sees all GPUs of its node; the placement gives rank r the GPU cuda:<local index>.
# Knobs: CONFIG, RLINF_MODULES, RLINF_MODULEPATH, RLINF_VENV, RLINF_PYTHON, RLINF_OUTPUT_DIR,
# RLINF_SRUN_ARGS, RLINF_PLAN (see slurm/common.sh).
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

CONFIG=${CONFIG:-math_grpo_32node.yaml}
rlinf_setup
rlinf_srun "${BASH_SOURCE[0]}" "$CONFIG" "$@"
