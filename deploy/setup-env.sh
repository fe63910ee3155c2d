#!/usr/bin/env bash
# Creates (or reuses) the Python environment and installs segstream into it.
#
# The virtualenv lives outside the clone, in $SEGSTREAM_HOME (default ~/.cache/segstream),
# named after the hash of requirements.lock and the Python version, so a new clone of an
# unchanged dependency list reuses it; pip's own cache makes a rebuild cheap. `.venv` in
# the clone is a link to it. The project itself is installed editable, without deps.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${SEGSTREAM_HOME:-$HOME/.cache/segstream}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
"$python" -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' \
  || { echo "segstream needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2; exit 1; }

key="$( (cat "$root/requirements.lock"; "$python" --version) | sha256sum | cut -c1-12)"
venv="$home/venv-$key"
mkdir -p "$home"
if [[ ! -f "$venv/.complete" ]]; then
  echo "setup-env: building $venv (first run downloads torch: several minutes)" >&2
  start=$(date +%s)
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$root/requirements.lock"
  touch "$venv/.complete"
  echo "setup-env: environment ready in $(( $(date +%s) - start ))s" >&2
  # keep only the newest few environments
  ls -1dt "$home"/venv-* 2>/dev/null | tail -n +4 | xargs -r rm -rf
fi
# The editable install points the shared environment at this clone: with several clones
# on one machine, the one that ran `make` last is the one `segstream` imports.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" >"$home/editable.log" 2>&1 \
  || { cat "$home/editable.log" >&2; exit 1; }
ln -sfn "$venv" "$root/.venv"
