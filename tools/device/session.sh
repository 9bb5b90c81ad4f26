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
set -uo pipefail
t_start=$(date +%s)
phase=${1:?phase}
secs=${2:-500}
source tools/device/env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/gpuseg_models /tmp/logs
log() { echo "[$(($(date +%s) - t_start)) s] $*"; }

if [[ $phase == train ]]; then
  nvidia-smi >/tmp/logs/nvidia-smi.txt 2>&1
  log "devices: $(build-gpu/gpuseg devices 2>&1 | head -5 | tr '\n' ' ')"
  # trainings end 50 s before the phase (then the dev evaluation and the copy); killed 5 s
  # before it at the latest (train_gpu.sh then keeps the last 10-epoch checkpoint)
  end_train=$((t_start + secs - 50))
  for spec in full:2,32,64,128,256 mid:2,16,32,64,128; do
    name=${spec%%:*}
    now=$(date +%s)
    GPUSEG_TRAIN_EXTRA="--deadline $end_train ${GPUSEG_TRAIN_EXTRA:-}" bash tools/train/train_gpu.sh "$name" \
      "${spec#*:}" "$((end_train - now))" /tmp/gpuseg_models "$((t_start + secs - 5 - now))" \
      >/tmp/logs/train_$name.out 2>&1 &
  done
  log "trainers started; ctest on NVIDIA OpenCL"
  if command -v ctest >/dev/null; then
    (cd build-gpu && GPUSEG_REQUIRE_DEVICE=1 timeout 300 ctest -j6 --output-on-failure \
      --timeout 280 ${GPUSEG_CTEST_ARGS:-}) >/tmp/logs/ctest.log 2>&1
  else
    for t in build-gpu/tests/test_*; do
      [[ -x $t ]] || continue
      (GPUSEG_REQUIRE_DEVICE=1 CK_DEFAULT_TIMEOUT=600 timeout 280 "$t" >"/tmp/logs/$(basename "$t").log" 2>&1
       echo "$(basename "$t") rc=$?") >>/tmp/logs/ctest.log &
    done
  fi
  log "ctest done: $(tail -3 /tmp/logs/ctest.log | tr '\n' ' ')"
  timeout 150 python3 bench/gpu_vs_cellpose.py --build build-gpu --out /tmp/logs/smoke --smoke \
    --repeats 1 >/tmp/logs/smoke.log 2>&1
  log "smoke bench rc=$?"
  wait
  log "trainers done"
  # models and their records come back; logs go into the tarball
  cp /tmp/gpuseg_models/*.log /tmp/logs/ 2>/dev/null
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
    --deadline $((t_start + secs - 25)) >/tmp/logs/bench.log 2>&1
  log "bench rc=$?"
else
  echo "session.sh: unknown phase '$phase'" >&2
  exit 2
fi
tar czf "$out/logs-$phase.tgz" -C /tmp logs 2>/dev/null
log "end"
