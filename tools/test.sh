#!/usr/bin/env bash
# tools/test.sh: the test command (README and .ci/run call it). Sets up (tools/setup.sh), checks
# formatting, builds with warnings as errors (gcc, and clang compile-only), runs the whole Check suite under ctest with the
# device tests required to run (on PoCL where there is no GPU), builds the example against the
# *installed* library both ways (CMake package and pkg-config), and runs the host-side tests
# again under AddressSanitizer + UndefinedBehaviorSanitizer; tests the Python package (python/).
# Environment: GPUSEG_TEST_SKIP_ASAN=1 skips the sanitizer pass (for quick local runs).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
build=${GPUSEG_BUILD_DIR:-$here/build}
jobs=$(nproc)

bash tools/setup.sh --no-build

echo "== format check"
bash tools/format.sh --check

echo "== build (warnings are errors)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPUSEG_WERROR=ON >/dev/null
cmake --build "$build" -j"$jobs"

echo "== build with clang too (warnings are errors; compile only)"
# clang-15 comes with PoCL (libpocl2 depends on it); its warnings differ from gcc's.
cmake -S . -B "$build-clang" -DCMAKE_C_COMPILER=clang-15 -DCMAKE_BUILD_TYPE=Debug \
  -DGPUSEG_WERROR=ON >/dev/null
cmake --build "$build-clang" -j"$jobs" >/dev/null

echo "== install + examples against the installed library"
prefix=$(mktemp -d /tmp/gpuseg-install-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
# The installed command finds the installed bundled model (not the source tree's copy).
env -u GPUSEG_MODEL "$prefix/bin/gpuseg" segment --help \
  | grep -F "($(cd "$prefix" && pwd -P)/share/gpuseg/models/" >/dev/null \
  || { echo "installed gpuseg does not find the model installed under $prefix/share" >&2; exit 1; }
bash examples/build_against_install.sh "$prefix"

echo "== tests"
export GPUSEG_REQUIRE_DEVICE=1                    # a device test that cannot run fails, not skips
export GPUSEG_CACHE_DIR="$build/program-cache"    # keep the user's cache out of it
# The Python interop tests (examples/python) need numpy: Debian's python3-numpy (setup.sh).
if [[ -z ${GPUSEG_PYTHON:-} ]] && /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
  export GPUSEG_PYTHON=/usr/bin/python3
fi
(cd "$build" && ctest --output-on-failure -j"$jobs" --timeout 900)

echo "== Python package (python/: pip install ./python, pytest python/tests)"
# Skips with one SKIPPED line when PyPI cannot be reached; a failure fails the suite.
GPUSEG_BUILD_DIR="$build" bash tools/test_python.sh

if [[ ${GPUSEG_TEST_SKIP_ASAN:-0} != 1 ]]; then
  echo "== host-side tests under AddressSanitizer + UndefinedBehaviorSanitizer"
  # No OpenCL platform in this pass (an empty vendor folder): PoCL's JIT is not built for ASan,
  # so the device cases skip (77) and every parser and host path runs instrumented.
  asan="$build-asan"
  cmake -S . -B "$asan" -DCMAKE_BUILD_TYPE=Debug -DGPUSEG_SANITIZE=ON -DGPUSEG_BUILD_BENCH=OFF \
    -DGPUSEG_WERROR=ON >/dev/null
  cmake --build "$asan" -j"$jobs"
  empty=$(mktemp -d /tmp/gpuseg-novendors-XXXXXX)
  (cd "$asan" && env -u GPUSEG_REQUIRE_DEVICE OCL_ICD_VENDORS="$empty" \
     ASAN_OPTIONS=abort_on_error=0:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
     ctest --output-on-failure -j"$jobs" --timeout 900)
  rm -rf "$empty"
fi
if [[ ${GPUSEG_TEST_SKIP_VALGRIND:-0} != 1 ]]; then
  echo "== host-side tests under Valgrind memcheck (a quick subset: bash tools/valgrind.sh runs all)"
  # The whole set takes ~45 min under memcheck (test_io decodes every dsb2018 image); CI runs the
  # programs that cover the library's entry points quickly, and the bad-input catalogue with
  # every gpuseg command under memcheck.
  GPUSEG_VALGRIND_BUILD_DIR="$build-valgrind" \
    GPUSEG_VALGRIND_TESTS='^test_(core|catalogue|fuzz_replay|metrics|limits)$' \
    bash tools/valgrind.sh
fi
echo "== all tests passed"
