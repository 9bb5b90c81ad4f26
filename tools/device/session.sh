#!/usr/bin/env bash
# tools/device/session.sh PHASE [SECONDS]: what runs on a lent GPU machine (docs/gpu.md), from the
# repository root there, with .device/ carried (tools/device/prepare.sh makes it).
#   train SECONDS  Cellpose's train_seg on the GPU for two CPnet widths at once (full
#                  [2,32,64,128,256] and [2,16,32,64,128]), each ending SECONDS after this
#                  script started; meanwhile the ctest suite on NVIDIA's OpenCL and a small run of
#                  bench/gpu_vs_cellpose.py. Models stay in /tmp/gpuseg_models for the next phase
#                  (the machine stays warm for a while) and come back under $OUT.
#   bench SECONDS  bench/gpu_vs_cellpose.py on the idle GPU with the trained models and the
#                  bundled one; no part starts after SECONDS - 25.
#   gemm SECONDS   issue #15 in one call (~480 s; carry only .device/carry/bundle.tar.xz): the
#                  ctest suite on NVIDIA's OpenCL (at most a third of the time), then on the idle
#                  GPU bench/gpu_vs_cellpose.py's parts info,tune,net,segment: the GEMM tuned on
#                  every shape of the full-width CPnet and the bundled model (its sets kept for
#                  the parts after it; conv_params.c for the committed table), the network on
#                  2048^2 (144 tiles) under AUTO, GEMM and direct against PyTorch fp32 and TF32,
#                  the whole pipeline against Cellpose on 1024^2 and 2048^2 (full-width random
#                  CPnet and the bundled model); then bench/gpu_report.py writes report.md.
#                  No part starts after SECONDS - 25.
#   gemm SECONDS dry
#                  the same on this machine (PoCL, PyTorch on the CPU) with small sizes and the
#                  build in build/, to try the script: OUT defaults to /tmp/gemm-dry.
set -uo pipefail
t_start=$(date +%s)
phase=${1:?phase}
secs=${2:-500}
dry=${3:-}
if [[ $dry == dry ]]; then
  build=build
  py=${PYTHON:-/work/venv/bin/python}
  out=${OUT:-/tmp/gemm-dry}
  export GPUSEG_CACHE_DIR=${GPUSEG_CACHE_DIR:-$out/cache}
  logs=$out/logs
else
  source tools/device/env.sh
  build=build-gpu
  py=python3
  out=${OUT:-/tmp/out}
  logs=/tmp/logs
fi
mkdir -p "$out" /tmp/gpuseg_models "$logs"
log() { echo "[$(($(date +%s) - t_start)) s] $*"; }

if [[ $phase == train ]]; then
  nvidia-smi >$logs/nvidia-smi.txt 2>&1
  log "devices: $(build-gpu/gpuseg devices 2>&1 | head -5 | tr '\n' ' ')"
  # trainings end 50 s before the phase (then the dev evaluation and the copy); killed 5 s
  # before it at the latest (train_gpu.sh then keeps the last 10-epoch checkpoint)
  end_train=$((t_start + secs - 50))
  for spec in full:2,32,64,128,256 mid:2,16,32,64,128; do
    name=${spec%%:*}
    now=$(date +%s)
    GPUSEG_TRAIN_EXTRA="--deadline $end_train ${GPUSEG_TRAIN_EXTRA:-}" bash tools/train/train_gpu.sh "$name" \
      "${spec#*:}" "$((end_train - now))" /tmp/gpuseg_models "$((t_start + secs - 5 - now))" \
      >$logs/train_$name.out 2>&1 &
  done
  log "trainers started; ctest on NVIDIA OpenCL"
  if command -v ctest >/dev/null; then
    (cd build-gpu && GPUSEG_REQUIRE_DEVICE=1 timeout 300 ctest -j6 --output-on-failure \
      --timeout 280 ${GPUSEG_CTEST_ARGS:-}) >$logs/ctest.log 2>&1
  else
    for t in build-gpu/tests/test_*; do
      [[ -x $t ]] || continue
      (GPUSEG_REQUIRE_DEVICE=1 CK_DEFAULT_TIMEOUT=600 timeout 280 "$t" >"$logs/$(basename "$t").log" 2>&1
       echo "$(basename "$t") rc=$?") >>$logs/ctest.log &
    done
  fi
  log "ctest done: $(tail -3 $logs/ctest.log | tr '\n' ' ')"
  timeout 150 python3 bench/gpu_vs_cellpose.py --build build-gpu --out $logs/smoke --smoke \
    --repeats 1 >$logs/smoke.log 2>&1
  log "smoke bench rc=$?"
  wait
  log "trainers done"
  # models and their records come back; logs go into the tarball
  cp /tmp/gpuseg_models/*.log $logs/ 2>/dev/null
  for f in /tmp/gpuseg_models/*; do
    case $f in *.log) ;; *) cp "$f" "$out/" ;; esac
  done
elif [[ $phase == bench ]]; then
  models=
  for n in full mid; do
    m=/tmp/gpuseg_models/$n
    [[ -s $m || ! -e $m.part00 ]] || cat "$m".part* >"$m"
    [[ -s $m ]] || { [[ -s $m.ckpt ]] && m=$m.ckpt; }
    [[ -s $m ]] && models+="$n=$m,"
  done
  models+="bundled=models/nuclei_gpuseg_v2"
  python3 bench/gpu_vs_cellpose.py --build build-gpu --out "$out" \
    --parts info,segment,net,masks,cli --models "$models" --repeats 3 ${GPUSEG_BENCH_EXTRA:-} \
    --deadline $((t_start + secs - 25)) >$logs/bench.log 2>&1
  log "bench rc=$?"
elif [[ $phase == gemm ]]; then
  if [[ $dry == dry ]]; then
    extra=(--smoke --torch-device cpu --repeats 1 --net-sides 224 --segment-sides 256)
    tests=${GPUSEG_CTEST_ARGS:--R test_ops}
  else
    nvidia-smi >$logs/nvidia-smi.txt 2>&1
    extra=(--repeats 3 --net-sides 2048 --segment-sides 1024,2048)
    tests=${GPUSEG_CTEST_ARGS:-}
  fi
  log "devices: $($build/gpuseg devices 2>&1 | head -3 | tr '\n' ' ')"
  ctest_s=$((secs / 3))
  (cd $build && GPUSEG_REQUIRE_DEVICE=1 timeout $ctest_s ctest -j4 --output-on-failure \
    --timeout $((ctest_s - 10)) $tests) >$logs/ctest.log 2>&1
  log "ctest rc=$?: $(grep -E 'tests passed|tests failed' $logs/ctest.log | tr '\n' ' ')"
  cp $logs/ctest.log "$out/ctest.log"
  $py bench/gpu_vs_cellpose.py --build $build --out "$out" --parts info,tune,net,segment \
    --models "full=random,bundled=models/nuclei_gpuseg_v2" --net-variants auto,gemm,direct \
    "${extra[@]}" ${GPUSEG_BENCH_EXTRA:-} --deadline $((t_start + secs - 25)) \
    >$logs/bench.log 2>&1
  log "bench rc=$?"
  $py bench/gpu_report.py "$out" >>$logs/bench.log 2>&1
  log "report rc=$?"
else
  echo "session.sh: unknown phase '$phase'" >&2
  exit 2
fi
tar czf "$out/logs-$phase.tgz" -C "$(dirname "$logs")" "$(basename "$logs")" 2>/dev/null
log "end"
