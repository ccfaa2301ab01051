#!/usr/bin/env bash
# The device side (models/, edge_runtime/, deploy/) must run on Python 3.10
# (JetPack 6). vermin checks the syntax statically; this runs it for real: a
# Python 3.10 virtual environment with only the `edge` extra (no torch), the
# torch-free tests (onnx builds their tiny encoders), and `edge-runtime match`
# on the shipped sample bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
is310() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; }
PY310="${PY310:-}"
if ! is310 "$PY310"; then
  PY310=""
  # pyenv shims answer to `python3.10` even when 3.10 is not selected: test each candidate.
  candidates="$(command -v python3.10 || true)"
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.|$)' | sort -V); do
      candidates="$(pyenv root)/versions/$v/bin/python3.10 $candidates"
    done
  fi
  for c in $candidates /usr/bin/python3.10; do
    if is310 "$c"; then PY310="$c"; break; fi
  done
fi
if [ -z "$PY310" ]; then
  echo "check-py310: no Python 3.10 interpreter found (set PY310=/path/to/python3.10); skipped" >&2
  exit 0
fi
VENV=.venv310
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  "$PY310" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[edge]" pytest pytest-timeout hypothesis jsonschema pyyaml onnx
  touch "$VENV/.installed"
fi
echo "check-py310: $("$VENV/bin/python" --version) with the edge extra"
"$VENV/bin/python" - <<'PY'
import importlib, pkgutil, sys
import edge_runtime, models, deploy
skip = {"models.network", "models.lite0"}  # the trainer's torch modules
for pkg in (models, edge_runtime, deploy):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if m.name not in skip:
            importlib.import_module(m.name)
assert "torch" not in sys.modules, "torch was imported on the device side"
print("check-py310: every device-side module imports without torch")
PY
find sample/queries -name "*.jpg" -print0 | xargs -0 "$VENV/bin/edge-runtime" match sample/bundle --json --top-k 1 > /dev/null
echo "check-py310: edge-runtime match on the sample bundle works"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/models tests/updates
