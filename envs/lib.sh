# shellcheck shell=bash disable=SC2034  # (variables for the scripts that source this)
# Shared by envs/install.sh and envs/download.sh: options, and install targets -> requirement files.
ENVS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RLINF_ROOT=$(dirname "$ENVS_DIR")
REQ_DIR=$ENVS_DIR/requirements
MODELS=(mlp openvla-oft openpi)
SIM_ENVS=(gym maniskill libero)
ROLLOUTS=(hf vllm sglang)

envs_log() { printf '[envs] %s\n' "$*"; }
envs_die() { printf '[envs] error: %s\n' "$*" >&2; exit 2; }

envs_usage() {
  local IFS='|'
  cat <<EOF
usage: bash envs/$1 TARGET [options]

targets:
  embodied [--model ${MODELS[*]}] [--env ${SIM_ENVS[*]}]   (default: --model mlp --env gym)
  reason   [--rollout ${ROLLOUTS[*]}]                       (default: hf, i.e. no extra engine)
  docs
  custom   only the --requirements files
options:
  --requirements FILE   add a requirement file (repeatable; site-specific packages)
  --with-mpi            add mpi4py (build it after 'module load openmpi')
  --with-test           add the test tools (pytest, ruff)
  --wheelhouse DIR      local wheels and git clones (default: envs/wheelhouse, or \$RLINF_WHEELHOUSE)
  --python PY           base interpreter for the venv (default: python3)
EOF
  if [[ $1 == install.sh ]]; then
    cat <<EOF
  --venv DIR            the virtualenv to create or update (default: .venv)
  --uv | --pip          installer (default: uv when on PATH, else pip)
  --offline             never use the package index: fail if the wheelhouse lacks something
  --torch-index-url URL extra index for torch builds (CPU: https://download.pytorch.org/whl/cpu)
  --no-project          do not install rlinf itself (editable) into the venv
  --modulefile DIR      also write an Lmod modulefile DIR/rlinf/<target>.lua for the venv
  --dry-run             print the plan (files, requirements, wheelhouse or index), install nothing
EOF
  else
    cat <<EOF
  --python-version V    download for another interpreter (e.g. 3.11; binary wheels only)
  --platform P          download for another platform (e.g. manylinux2014_x86_64)
EOF
  fi
}

envs_in() { local x=$1; shift; local y; for y in "$@"; do [[ $x == "$y" ]] && return 0; done; return 1; }

# envs_parse SCRIPT ARGS...: set TARGET, MODEL, SIM_ENV, ROLLOUT, EXTRA_REQS, and the options.
envs_parse() {
  local script=$1
  shift
  TARGET='' MODEL=mlp SIM_ENV=gym ROLLOUT=hf EXTRA_REQS=() WITH_MPI=0 WITH_TEST=0
  VENV=$RLINF_ROOT/.venv PY=python3 WHEELHOUSE=${RLINF_WHEELHOUSE:-$ENVS_DIR/wheelhouse}
  OFFLINE=0 NO_PROJECT=0 TORCH_INDEX='' INSTALLER=auto MODULEFILE_DIR='' DRY=0 PYVER='' PLATFORM=''
  while (($#)); do
    case $1 in
      -h | --help) envs_usage "$script"; exit 0 ;;
      embodied | reason | docs | custom) TARGET=$1; shift ;;
      --model) MODEL=$2; shift 2 ;;
      --env) SIM_ENV=$2; shift 2 ;;
      --rollout) ROLLOUT=$2; shift 2 ;;
      --requirements) EXTRA_REQS+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
      --with-mpi) WITH_MPI=1; shift ;;
      --with-test) WITH_TEST=1; shift ;;
      --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
      --python) PY=$2; shift 2 ;;
      --venv) VENV=$2; shift 2 ;;
      --uv) INSTALLER=uv; shift ;;
      --pip) INSTALLER=pip; shift ;;
      --offline) OFFLINE=1; shift ;;
      --torch-index-url) TORCH_INDEX=$2; shift 2 ;;
      --no-project) NO_PROJECT=1; shift ;;
      --modulefile) MODULEFILE_DIR=$2; shift 2 ;;
      --dry-run) DRY=1; shift ;;
      --python-version) PYVER=$2; shift 2 ;;
      --platform) PLATFORM=$2; shift 2 ;;
      *) envs_usage "$script" >&2; envs_die "unknown argument '$1'" ;;
    esac
  done
  [[ -n $TARGET ]] || { envs_usage "$script" >&2; envs_die "name a target: embodied, reason, docs or custom"; }
  WHEELHOUSE=$(mkdir -p "$(dirname "$WHEELHOUSE")" && cd "$(dirname "$WHEELHOUSE")" && pwd)/$(basename "$WHEELHOUSE")
}

# envs_files: REQ_FILES (requirement files of the target, in install order) and TARGET_NAME.
envs_files() {
  REQ_FILES=()
  case $TARGET in
    embodied)
      envs_in "$MODEL" "${MODELS[@]}" || envs_die "--model $MODEL: choose one of ${MODELS[*]}"
      envs_in "$SIM_ENV" "${SIM_ENVS[@]}" || envs_die "--env $SIM_ENV: choose one of ${SIM_ENVS[*]}"
      REQ_FILES=("$REQ_DIR/base.txt" "$REQ_DIR/torch.txt" "$REQ_DIR/embodied/models/$MODEL.txt"
        "$REQ_DIR/embodied/envs/$SIM_ENV.txt")
      TARGET_NAME=embodied-$MODEL-$SIM_ENV
      ;;
    reason)
      envs_in "$ROLLOUT" "${ROLLOUTS[@]}" || envs_die "--rollout $ROLLOUT: choose one of ${ROLLOUTS[*]}"
      REQ_FILES=("$REQ_DIR/base.txt" "$REQ_DIR/torch.txt" "$REQ_DIR/reason/base.txt")
      [[ $ROLLOUT != hf ]] && REQ_FILES+=("$REQ_DIR/reason/rollout-$ROLLOUT.txt")
      TARGET_NAME=reason-$ROLLOUT
      ;;
    docs) REQ_FILES=("$REQ_DIR/docs.txt"); TARGET_NAME=docs ;;
    custom)
      ((${#EXTRA_REQS[@]})) || envs_die "target custom needs --requirements FILE"
      TARGET_NAME=custom
      ;;
  esac
  ((WITH_MPI)) && REQ_FILES+=("$REQ_DIR/mpi.txt")
  ((WITH_TEST)) && REQ_FILES+=("$REQ_DIR/test.txt")
  REQ_FILES+=("${EXTRA_REQS[@]}")
  local f
  for f in "${REQ_FILES[@]}"; do [[ -f $f ]] || envs_die "requirement file $f does not exist"; done
}
