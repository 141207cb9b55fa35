#!/usr/bin/env bash
# Create (or update) a virtualenv with what one RLinf target needs, from a local wheelhouse when
# there is one, else from the package index.
#
#   bash envs/install.sh embodied --model openvla-oft --env libero     # -> .venv
#   bash envs/install.sh embodied --model mlp --env gym --venv ~/venvs/rlinf-cpu \
#        --torch-index-url https://download.pytorch.org/whl/cpu
#   bash envs/install.sh reason --rollout vllm --venv /shared/venvs/rlinf-reason --modulefile /shared/modulefiles
#   bash envs/install.sh docs
#   bash envs/install.sh --help
#
# Offline: `bash envs/download.sh <same target>` on a connected machine fills envs/wheelhouse
# (wheels + clones of git dependencies); copy it over. Here, every requirement the wheelhouse
# can satisfy is installed with `--no-index --find-links`; the rest falls back to the index
# (never with --offline). One line per installed package says where it came from:
#   [envs] numpy==1.26.4   wheelhouse  /path/envs/wheelhouse/numpy-1.26.4-...whl
#   [envs] six==1.17.0     index       https://files.pythonhosted.org/...
set -euo pipefail
# shellcheck source=envs/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
envs_parse install.sh "$@"
envs_files

if [[ $INSTALLER == auto ]]; then
  INSTALLER=pip
  command -v uv >/dev/null && INSTALLER=uv
fi
[[ $INSTALLER == uv ]] && ! command -v uv >/dev/null && envs_die "--uv: uv is not on PATH (pip install uv)"
command -v "$PY" >/dev/null || envs_die "--python $PY: not found"

envs_log "target $TARGET_NAME -> venv $VENV ($INSTALLER)"
for f in "${REQ_FILES[@]}"; do envs_log "  requirements ${f#"$RLINF_ROOT"/}"; done
HAVE_WH=0
if [[ -d $WHEELHOUSE ]] && [[ -n $(ls -A "$WHEELHOUSE" 2>/dev/null) ]]; then
  HAVE_WH=1
  envs_log "wheelhouse $WHEELHOUSE: used first (--no-index --find-links)"
elif ((OFFLINE)); then
  envs_die "--offline but the wheelhouse $WHEELHOUSE is missing or empty: fill it with envs/download.sh"
else
  envs_log "no wheelhouse at $WHEELHOUSE: everything comes from the index"
fi

# The venv (its interpreter evaluates markers and wheel tags below).
if [[ ! -x $VENV/bin/python ]]; then
  if ((DRY)); then
    envs_log "dry run: would create $VENV with $PY"
  elif [[ $INSTALLER == uv ]]; then
    uv venv --python "$PY" "$VENV" >/dev/null
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY=$VENV/bin/python
HELPER_PY=$VPY
[[ -x $VPY ]] && "$VPY" -c 'import pip' 2>/dev/null || HELPER_PY=$PY
helper() { "$HELPER_PY" "$ENVS_DIR/wheelhouse.py" "$@"; }

wh_args=()
((HAVE_WH)) && wh_args=(--wheelhouse "$WHEELHOUSE")
reqs_text=$(helper requirements "${wh_args[@]}" "${REQ_FILES[@]}")
mapfile -t REQS <<<"$reqs_text"
[[ -n $reqs_text ]] || REQS=()

LOCAL=() REMOTE=()
declare -A WHY=()
if ((HAVE_WH)) && ((${#REQS[@]})); then
  rows=$(helper classify --wheelhouse "$WHEELHOUSE" "${REQS[@]}")
  while IFS=$'\t' read -r where req why; do
    if [[ $where == local ]]; then LOCAL+=("$req"); else REMOTE+=("$req"); WHY[$req]=$why; fi
  done <<<"$rows"
else
  REMOTE=("${REQS[@]}")
fi
if ((HAVE_WH)); then
  then_what="using the index"
  ((OFFLINE)) && then_what="and --offline forbids the index"
  for req in "${REMOTE[@]}"; do envs_log "$req: ${WHY[$req]:-not in the wheelhouse}: $then_what"; done
fi
if ((OFFLINE)) && ((${#REMOTE[@]})); then
  envs_die "--offline: the wheelhouse cannot satisfy: ${REMOTE[*]} (add them to a requirement file and run envs/download.sh)"
fi
if ((DRY)); then
  for req in "${LOCAL[@]}"; do envs_log "dry run: $req <- wheelhouse"; done
  for req in "${REMOTE[@]}"; do envs_log "dry run: $req <- index"; done
  exit 0
fi

REPORTS=$(mktemp -d)
trap 'rm -rf "$REPORTS"' EXIT
index_args=()
[[ -n $TORCH_INDEX ]] && index_args+=(--extra-index-url "$TORCH_INDEX")
((HAVE_WH)) && index_args+=(--find-links "$WHEELHOUSE")

# pip_install WHERE REPORT REQ...: WHERE is "local" (--no-index) or "index".
pip_install() {
  local where=$1 report=$2
  shift 2
  local src=("${index_args[@]}")
  [[ $where == local ]] && src=(--no-index --find-links "$WHEELHOUSE")
  if [[ $INSTALLER == uv ]]; then
    uv pip install --python "$VPY" "${src[@]}" "$@"
  else
    "$VPY" -m pip install --disable-pip-version-check --progress-bar off -q \
      --report "$report" "${src[@]}" "$@"
  fi
}

if ((${#LOCAL[@]})); then
  if ! pip_install local "$REPORTS/local.json" "${LOCAL[@]}"; then
    ((OFFLINE)) && envs_die "--offline: installing from the wheelhouse failed (see pip's message above); a dependency is probably missing: run envs/download.sh for this target again"
    envs_log "the wheelhouse is incomplete for: ${LOCAL[*]} (a dependency is missing): using the index for them"
    REMOTE+=("${LOCAL[@]}")
    rm -f "$REPORTS/local.json"
    LOCAL=()
  fi
fi
if ((${#REMOTE[@]})); then
  pip_install index "$REPORTS/index.json" "${REMOTE[@]}"
fi

if [[ $INSTALLER == pip ]]; then
  helper report --wheelhouse "$WHEELHOUSE" "$REPORTS/local.json" "$REPORTS/index.json"
else  # uv writes no report: one line per requirement, by where it was asked to look
  for req in "${LOCAL[@]}"; do envs_log "$req  wheelhouse"; done
  for req in "${REMOTE[@]}"; do envs_log "$req  index"; done
fi

if ((!NO_PROJECT)); then
  # rlinf itself, from this checkout (like an editable install, but needs no build tools
  # offline): a .pth file on the venv's path and the rlinf-launch command.
  site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$RLINF_ROOT" >"$site/rlinf-checkout.pth"
  printf '#!%s\nimport sys\nfrom rlinf.launch import main\nsys.exit(main())\n' "$VPY" \
    >"$VENV/bin/rlinf-launch"
  chmod +x "$VENV/bin/rlinf-launch"
  envs_log "rlinf (this checkout, via $site/rlinf-checkout.pth) -> $RLINF_ROOT"
fi

if [[ -n $MODULEFILE_DIR ]]; then
  mkdir -p "$MODULEFILE_DIR/rlinf"
  mf=$MODULEFILE_DIR/rlinf/$TARGET_NAME.lua
  venv_abs=$(cd "$VENV" && pwd)
  sed -e "s|@VENV@|$venv_abs|g" -e "s|@ROOT@|$RLINF_ROOT|g" -e "s|@TARGET@|$TARGET_NAME|g" \
    "$ENVS_DIR/modules/rlinf.lua.in" >"$mf"
  envs_log "modulefile $mf: module use $MODULEFILE_DIR && module load rlinf/$TARGET_NAME"
fi
envs_log "done: source $VENV/bin/activate (or RLINF_VENV=$VENV for the slurm/ scripts)"
