#!/usr/bin/env bash
# tools/test_python.sh: the Python package's tests (python/, issue #17), a step of tools/test.sh.
# Creates a venv in the build folder (ignored by git), installs the test dependencies from PyPI
# (numpy, pytest, dask[array,distributed], zarr, scikit-build-core), pip-installs ./python (which
# builds libgpuseg with this repository's CMake into its own build folder) and runs pytest on
# python/tests. When the venv cannot be made or PyPI cannot be reached, it prints one line
# "== python package tests: SKIPPED (why)" and exits 0: a skip, never a pass. A failing build of
# the package, a failing test, or pytest finding no tests (exit 5) fails the step.
# Environment: GPUSEG_BUILD_DIR (default build/), GPUSEG_PYTHON_BASE (the interpreter that makes
# the venv; default python3), GPUSEG_PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
build=${GPUSEG_BUILD_DIR:-$here/build}
venv="$build/python-venv"
log="$build/python-setup.log"
mkdir -p "$build"
skip() { echo "== python package tests: SKIPPED ($1; details in $log)"; exit 0; }

base=${GPUSEG_PYTHON_BASE:-python3}
command -v "$base" >/dev/null || skip "no $base"
if [[ ! -x $venv/bin/python ]]; then
  "$base" -m venv "$venv" >"$log" 2>&1 || { rm -rf "$venv"; skip "$base -m venv failed (python3-venv missing?)"; }
fi
py="$venv/bin/python"
deps=(numpy pytest "dask[array,distributed]" zarr "scikit-build-core>=0.8")
if ! "$py" -m pip install -q --disable-pip-version-check "${deps[@]}" >>"$log" 2>&1; then
  skip "pip could not install ${deps[*]} (no PyPI?)"
fi
echo "== python package: pip install ./python"
# --no-build-isolation: the build backend is the one installed above (no second download);
# the CMake build folder persists so that a rerun only rebuilds what changed.
"$py" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall \
  --no-deps ./python -Cbuild-dir="$build/python-build" >>"$log" 2>&1 \
  || { tail -30 "$log" >&2; echo "pip install ./python failed" >&2; exit 1; }
echo "== python package tests (pytest python/tests)"
rc=0
# shellcheck disable=SC2086
(cd "$here/python/tests" && "$py" -m pytest -q -rs -rsx -p no:cacheprovider ${GPUSEG_PYTEST_ARGS:-} .) || rc=$?
if ((rc == 5)); then
  echo "pytest collected no tests in python/tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
