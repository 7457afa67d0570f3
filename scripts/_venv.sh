# Sourced by scripts/*: make sure .venv exists and matches setup.cfg, then activate it.
# A stamp file holds the hash of setup.cfg + pyproject.toml; a mismatch (or a missing or
# broken venv) triggers a (re)install, so a fresh clone needs nothing done first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPEAR_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
STAMP="$VENV/.spear-stamp"
want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null \
   || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "spear: setting up $VENV (first run or setup.cfg changed) ..." >&2
  "$PYTHON_BIN" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"'
  [ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test,prometheus]" >&2
  echo "$want" > "$STAMP"
  echo "spear: environment ready" >&2
fi
export PATH="$VENV/bin:$PATH"
# no `cd` here: spear-up resolves --config (and relative paths) from the caller's directory;
# the scripts that work on the repository itself (test, bench, soak) cd to "$ROOT" themselves
