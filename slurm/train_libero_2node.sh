#!/usr/bin/env bash
#SBATCH --job-name=rlinf-libero
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=USR1@120
#
# An embodied VLA policy (OpenVLA-OFT) with PPO in LIBERO, 2 nodes x 8 GPUs: one task per GPU,
# every task running `python -m rlinf.launch` through srun (config: configs/libero.yaml).
#
#   sbatch slurm/train_libero_2node.sh [key=value ...]
#   RLINF_PLAN=1 bash slurm/train_libero_2node.sh      # dry run: rank map + srun line
#   RLINF_VENV=$HOME/venvs/rlinf-libero sbatch slurm/train_libero_2node.sh
#   # other sizes: sbatch flags override the header, the config must agree, e.g.
#   sbatch --nodes=4 slurm/train_libero_2node.sh cluster.num_nodes=4
#
# SIGUSR1 two minutes before the time limit: checkpoint, requeue, resume (runner.resume_dir=auto).
# MuJoCo renders headless: MUJOCO_GL=egl is set unless you set it. Knobs: see slurm/common.sh.
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

CONFIG=${CONFIG:-libero.yaml}
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
rlinf_setup
rlinf_srun "${BASH_SOURCE[0]}" "$CONFIG" "$@"
