#!/usr/bin/env bash
# tools/setup_python.sh: creates the Python virtual environment .venv/ (ignored by git) that the
# fixture scripts (tools/fixtures/), the training recipe (tools/train/) and the benchmark suite
# (bench/) use: reference Cellpose 3.1 (cellpose<4, with PyTorch CPU), matplotlib for the
# benchmark plots, tifffile. Idempotent: installs only what is missing. Python is never needed
# by the library or the command at run time.
# Environment: PYTHON (default python3), GPUSEG_VENV (default <repo>/.venv).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${GPUSEG_VENV:-$here/.venv}
python=${PYTHON:-python3}

if [[ ! -x $venv/bin/python ]]; then
  echo "setup_python: creating $venv"
  "$python" -m venv "$venv"
fi
want=("cellpose<4" matplotlib tifffile)
if ! "$venv/bin/python" - <<'PY' 2>/dev/null; then
import importlib.metadata as m
v = m.version("cellpose")
assert v.split(".")[0] == "3", v
import matplotlib, tifffile, torch  # noqa: F401
PY
  echo "setup_python: installing ${want[*]}"
  "$venv/bin/pip" install -q "${want[@]}"
else
  echo "setup_python: $venv has cellpose 3, torch, matplotlib, tifffile"
fi
