#!/usr/bin/env bash
# tools/valgrind.sh: runs the host-side tests under Valgrind memcheck (issue #8): every Check test
# program in one process (CK_FORK=no) with no OpenCL platform (an empty vendor folder, as the
# sanitizer pass of tools/test.sh), so that the device cases skip and every parser, writer and
# host path runs under memcheck; then the bad-input catalogue again with each `gpuseg` command
# under memcheck (GPUSEG_CATALOGUE_WRAPPER). Any memory error or definite leak fails (exit 99 from
# the program under test). tools/valgrind.supp holds suppressions for code outside gpuseg only.
# Environment: GPUSEG_VALGRIND_BUILD_DIR (default build-valgrind; configured and built here),
# GPUSEG_VALGRIND_TESTS (a ctest-style regex of test names; default all).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
build=${GPUSEG_VALGRIND_BUILD_DIR:-$here/build-valgrind}
[[ $build == /* ]] || build=$here/$build
only=${GPUSEG_VALGRIND_TESTS:-.}
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed (tools/setup.sh)" >&2; exit 1; }

# No sanitizers here (memcheck and ASan do not mix); optimised with debug info for readable stacks.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPUSEG_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null

vg=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
  --show-leak-kinds=definite --track-origins=yes --suppressions="$here/tools/valgrind.supp")
empty=$(mktemp -d /tmp/gpuseg-novendors-XXXXXX)
trap 'rm -rf "$empty"' EXIT
export OCL_ICD_VENDORS=$empty CK_FORK=no CK_DEFAULT_TIMEOUT=3000
unset GPUSEG_REQUIRE_DEVICE

# Runs "$@" in $build/tests with stdout+stderr to $log; sets rc and took ("wall s, CPU s").
TIMEFORMAT='%R %U %S'
run_logged() {
  local tf
  tf=$(mktemp)
  set +e
  { time (cd "$build/tests" && "$@" >"$log" 2>&1); } 2>"$tf"
  rc=$?
  set -e
  read -r real user sys <"$tf"
  rm -f "$tf"
  took=$(awk -v r="$real" -v u="$user" -v s="$sys" 'BEGIN { printf "%5.0f s wall %5.0f s CPU", r, u + s }')
}

failed=()
start=$SECONDS
for t in "$build"/tests/test_*; do
  [[ -x $t && -f $t ]] || continue
  name=$(basename "$t")
  [[ $name =~ $only ]] || continue
  log="$build/valgrind-$name.log"
  run_logged "${vg[@]}" "$t"
  # 0 passed, 77 skipped (needs a device); 99 is memcheck's verdict, anything else a failed test
  case $rc in
    0) verdict="ok" ;;
    77) verdict="skipped" ;;
    99) verdict="MEMCHECK ERRORS"; failed+=("$name") ;;
    *) verdict="FAILED ($rc)"; failed+=("$name") ;;
  esac
  printf '%-28s %-16s %s  (%s)\n' "$name" "$verdict" "$took" "$log"
done

if [[ test_catalogue =~ $only ]]; then
  log="$build/valgrind-catalogue-cli.log"
  run_logged env GPUSEG_CATALOGUE_WRAPPER="${vg[*]}" ./test_catalogue
  if [[ $rc == 0 ]]; then verdict="ok"; else verdict="FAILED ($rc)"; failed+=("catalogue-cli"); fi
  printf '%-28s %-16s %s  (%s)\n' "catalogue, gpuseg under vg" "$verdict" "$took" "$log"
fi

echo "valgrind.sh: $((SECONDS - start)) s"
if ((${#failed[@]})); then
  echo "valgrind.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "valgrind.sh: clean"
