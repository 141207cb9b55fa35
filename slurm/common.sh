# shellcheck shell=bash
# Shared by the sbatch scripts in slurm/: software environment, dry run, and the srun line.
# Sourced, not run. Environment knobs (all optional):
#   RLINF_MODULES      modules to load, e.g. "cuda/12.4 openmpi/4.1 rlinf/embodied"
#   RLINF_MODULEPATH   directories for `module use` first (e.g. envs/modules of an install)
#   RLINF_VENV         a virtualenv to activate (e.g. one made by envs/install.sh)
#   RLINF_PYTHON       interpreter (default: python, after modules and venv)
#   RLINF_OUTPUT_DIR   runner.output_dir (default: the config's)
#   RLINF_PLAN=1       dry run: print the rank map and the launch line, start nothing
#                      (RLINF_PLAN=json: the full map as JSON, one entry per rank)
#   RLINF_SRUN_ARGS    extra srun arguments

rlinf_log() { printf '[rlinf %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

rlinf_plan_mode() { [[ ${RLINF_PLAN:-0} != 0 ]]; }

# rlinf_sbatch_opt SCRIPT NAME DEFAULT: the value of `#SBATCH --NAME=V` in SCRIPT (for dry runs,
# which do not run under sbatch and so have no SLURM_* variables).
rlinf_sbatch_opt() {
  local v
  v=$(sed -n "s/^#SBATCH[[:space:]]\{1,\}--$2[= ]\([^[:space:]]*\).*/\1/p" "$1" | tail -n 1)
  echo "${v:-$3}"
}

rlinf_load_modules() {
  [[ -n ${RLINF_MODULES:-}${RLINF_MODULEPATH:-} ]] || return 0
  if ! type module >/dev/null 2>&1; then
    local init
    for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash \
      /usr/share/modules/init/bash; do
      # shellcheck disable=SC1090
      [[ -f $init ]] && { set +u; source "$init"; set -u; break; }
    done
  fi
  if ! type module >/dev/null 2>&1; then
    if rlinf_plan_mode; then
      rlinf_log "dry run: would load modules: ${RLINF_MODULES:-} (no module command here)"
      return 0
    fi
    rlinf_log "error: RLINF_MODULES is set but this node has no 'module' command (Lmod or" \
      "Environment Modules); unset RLINF_MODULES or load the software another way"
    return 1
  fi
  local p m
  set +u
  for p in ${RLINF_MODULEPATH:-}; do module use "$p"; done
  for m in ${RLINF_MODULES:-}; do
    module load "$m" || { set -u; rlinf_log "error: module load $m failed"; return 1; }
  done
  set -u
  rlinf_log "modules: $(module -t list 2>&1 | tr '\n' ' ')"
}

# rlinf_setup: modules, venv, working directory, PYTHONPATH, thread counts.
rlinf_setup() {
  rlinf_load_modules
  if [[ -n ${RLINF_VENV:-} ]]; then
    [[ -f $RLINF_VENV/bin/activate ]] || { rlinf_log "error: RLINF_VENV=$RLINF_VENV has no bin/activate"; return 1; }
    set +u
    # shellcheck disable=SC1091
    source "$RLINF_VENV/bin/activate"
    set -u
  fi
  RLINF_PY=${RLINF_PYTHON:-python}
  cd "$RLINF_ROOT" || return 1
  export PYTHONPATH="$RLINF_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  export PYTHONUNBUFFERED=1
  if [[ -n ${SLURM_JOB_ID:-} ]]; then
    local restarts=${SLURM_RESTART_COUNT:-0}
    rlinf_log "job $SLURM_JOB_ID on ${SLURM_JOB_NUM_NODES:-?} node(s) ${SLURM_JOB_NODELIST:-}," \
      "restart $restarts$( ((restarts > 0)) && echo ': resuming from the newest checkpoint')"
  fi
}

# rlinf_overrides CONFIG ARGS...: the overrides every job gets (resume, output dir) + the user's.
rlinf_overrides() {
  RLINF_ARGS=(runner.resume_dir=auto)
  [[ -n ${RLINF_OUTPUT_DIR:-} ]] && RLINF_ARGS+=("runner.output_dir=$RLINF_OUTPUT_DIR")
  RLINF_ARGS+=("$@")
}

# rlinf_srun SCRIPT CONFIG ARGS...: one task per rank through srun, every task running
# `python -m rlinf.launch`; with RLINF_PLAN=1 print the rank map and the srun line instead.
rlinf_srun() {
  local script=$1 config=$2
  shift 2
  rlinf_overrides "$@"
  local nodes tpn
  nodes=${SLURM_JOB_NUM_NODES:-$(rlinf_sbatch_opt "$script" nodes 1)}
  tpn=${SLURM_NTASKS_PER_NODE:-$(rlinf_sbatch_opt "$script" ntasks-per-node 1)}
  tpn=${tpn%%(*}  # "8(x32)" -> 8
  # shellcheck disable=SC2206
  local cmd=(srun --nodes="$nodes" --ntasks-per-node="$tpn" --kill-on-bad-exit=1
    ${RLINF_SRUN_ARGS:-} "$RLINF_PY" -m rlinf.launch --config "$config" "${RLINF_ARGS[@]}")
  if rlinf_plan_mode; then
    local plan world fmt=()
    [[ $RLINF_PLAN == json ]] && fmt=(--json)
    plan=$("$RLINF_PY" -m rlinf.launch --config "$config" --plan "${fmt[@]}" "${RLINF_ARGS[@]}") ||
      return 2
    printf '%s\n' "$plan"
    world=$(sed -n 's/^world_size=\([0-9]*\).*/\1/p; s/^ *"world_size": \([0-9]*\).*/\1/p' \
      <<<"$plan" | head -n 1)
    printf '\nthis script runs (%s nodes x %s tasks = %s ranks):\n  %s\n' \
      "$nodes" "$tpn" "$((nodes * tpn))" "${cmd[*]}"
    if [[ -n $world && $world != $((nodes * tpn)) ]]; then
      rlinf_log "warning: the placement needs $world ranks but the SBATCH header gives" \
        "$((nodes * tpn)); change --nodes/--ntasks-per-node or the config"
    fi
    return 0
  fi
  rlinf_log "${cmd[*]}"
  "${cmd[@]}"
}

# rlinf_hetero SCRIPT CONFIG ARGS...: each node group under its own interpreter and env vars,
# through an srun --multi-prog file written by launch/hetero.py.
rlinf_hetero() {
  local script=$1 config=$2
  shift 2
  rlinf_overrides "$@"
  local extra=()
  rlinf_plan_mode && extra+=(--plan)  # (the per-node start lines are the map here)
  [[ -n ${RLINF_SRUN_ARGS:-} ]] && extra+=(--launcher-args "$RLINF_SRUN_ARGS")
  "$RLINF_PY" "$RLINF_ROOT/launch/hetero.py" --launcher srun --python "$RLINF_PY" "${extra[@]}" \
    --config "$config" "${RLINF_ARGS[@]}"
}
