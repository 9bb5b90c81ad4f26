#!/usr/bin/env bash
# bench/run.sh: the benchmark suite in one command (issue #7). Builds a Release tree if needed,
# makes the Python environment if needed (tools/setup_python.sh), then runs bench/suite.py:
# every gpuseg benchmark beside its reference (Cellpose 3.1 on PyTorch CPU, OpenBLAS sgemm, the
# `cellpose` command) and writes report.json, report.md and PNG plots.
#
#   bash bench/run.sh [--quick | --full] [--out DIR] [--build DIR] [--parts a,b,...]
#
#   --quick  (default) small sizes and few repeats: about 15 min on a 2-core CPU through PoCL
#   --full   every size of the issue (up to 4096², 16 MP), 3-5 repeats: for a GPU or an idle
#            machine; long on a small CPU
#   --out    report folder (default bench/results/<host>-<UTC date>-<mode>/)
#   --build  build folder (default build-bench/; configured -DCMAKE_BUILD_TYPE=Release)
#   --parts  a subset of startup,conv,masks,net_full,net_bundled,e2e, or the optional part
#            slides (issue #16: bench/slides_vs_cellpose.py; quick 40 MP, full 1 Gpx: hours)
# Environment: GPUSEG_DEVICE picks the OpenCL device as for gpuseg itself.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=quick
out=
build=$here/build-bench
parts=
while (($#)); do
  case $1 in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --out) out=$2; shift ;;
    --build) build=$2; shift ;;
    --parts) parts=$2; shift ;;
    -h | --help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $out ]] || out=$here/bench/results/$(hostname -s)-$(date -u +%Y%m%d-%H%M)-$mode

# Release build of the library, the command and the bench programs (warnings are not errors
# here: -Werror is the test build's business, and -O3 adds new ones).
mkdir -p "$build"
log=$build/bench-build.log
if ! { cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGPUSEG_WERROR=OFF &&
  cmake --build "$build" -j"$(nproc)" --target gpuseg_cli bench_startup bench_conv bench_masks \
    bench_net bench_segment; } >"$log" 2>&1; then
  tail -30 "$log" >&2
  echo "bench/run.sh: the Release build failed (full log: $log)" >&2
  exit 1
fi
bash "$here/tools/setup_python.sh" >/dev/null

echo "bench/run.sh: $mode run into $out (progress below)"
args=(--build "$build" --out "$out" --mode "$mode")
[[ -n $parts ]] && args+=(--parts "$parts")
cd "$here"
"$here/.venv/bin/python" "$here/bench/suite.py" "${args[@]}"
