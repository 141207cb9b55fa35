#!/usr/bin/env bash
# Fill a local wheelhouse for one RLinf target on a connected machine, so that envs/install.sh
# works where the package index cannot be reached (compute nodes, air-gapped clusters).
#
#   bash envs/download.sh embodied --model openvla-oft --env libero       # -> envs/wheelhouse
#   bash envs/download.sh reason --wheelhouse /shared/rlinf-wheelhouse
#   bash envs/download.sh embodied --python-version 3.11 --platform manylinux2014_x86_64
#
# What lands in the wheelhouse:
#   *.whl / *.tar.gz      every requirement of the target and all their dependencies
#                         (`pip download`), plus setuptools and wheel to build local sources
#   repos/<name>/         a clone of each git dependency (`name @ git+URL[@REF]`); install.sh
#                         installs it from there (file://) instead of cloning, and this script
#                         also downloads that package's own dependencies
# Running it again updates the clones and downloads only what is missing.
set -euo pipefail
# shellcheck source=envs/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
envs_parse download.sh "$@"
envs_files
command -v "$PY" >/dev/null || envs_die "--python $PY: not found"
"$PY" -c 'import pip' 2>/dev/null || envs_die "--python $PY has no pip"

mkdir -p "$WHEELHOUSE/repos"
envs_log "target $TARGET_NAME -> wheelhouse $WHEELHOUSE"
helper() { "$PY" "$ENVS_DIR/wheelhouse.py" "$@"; }
reqs_text=$(helper requirements "${REQ_FILES[@]}")
mapfile -t REQS <<<"$reqs_text"
[[ -n $reqs_text ]] || REQS=()

PLAIN=("setuptools>=64" "wheel")
for req in "${REQS[@]}"; do
  [[ -n $(helper git "$req") ]] || PLAIN+=("$req")
done

dl_args=(-d "$WHEELHOUSE" --disable-pip-version-check --progress-bar off)
[[ -n $TORCH_INDEX ]] && dl_args+=(--extra-index-url "$TORCH_INDEX")
if [[ -n $PYVER || -n $PLATFORM ]]; then
  dl_args+=(--only-binary=:all:)
  [[ -n $PYVER ]] && dl_args+=(--python-version "$PYVER")
  [[ -n $PLATFORM ]] && dl_args+=(--platform "$PLATFORM")
fi

envs_log "pip download: ${PLAIN[*]}"
"$PY" -m pip download "${dl_args[@]}" "${PLAIN[@]}"

git_rows=$(helper git "${REQS[@]}")
while IFS=$'\t' read -r name url ref; do
  [[ -n $name ]] || continue
  dest=$WHEELHOUSE/repos/$name
  if [[ -d $dest/.git ]]; then
    envs_log "repo $name: updating $dest from $url${ref:+ @ $ref}"
    git -C "$dest" fetch -q --depth 1 origin "${ref:-HEAD}"
    git -C "$dest" checkout -q FETCH_HEAD
  else
    envs_log "repo $name: cloning $url${ref:+ @ $ref} -> $dest"
    git clone -q --depth 1 ${ref:+--branch "$ref"} "$url" "$dest"
  fi
  envs_log "repo $name: downloading its dependencies"
  "$PY" -m pip download "${dl_args[@]}" "$dest"
done <<<"$git_rows"

n=$(find "$WHEELHOUSE" -maxdepth 1 -type f | wc -l)
envs_log "wheelhouse $WHEELHOUSE: $n files, $(du -sh "$WHEELHOUSE" | cut -f1); copy it next to" \
  "envs/install.sh on the offline machine (or pass --wheelhouse / RLINF_WHEELHOUSE)"
