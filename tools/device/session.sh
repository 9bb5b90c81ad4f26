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
#   train-fast SECONDS  tools/train/train_fast.py (data and augmentation on the GPU) trains the
#                  full-width net [2,32,64,128,256] alone for as many epochs as fit (speed
#                  probe; Cellpose's schedule, warm-up to final lr halving, in full), scores the
#                  checkpoints at 60/80/100% of it on the validation split and the selected one
#                  on dev (Cellpose on CUDA), then checks that gpuseg loads it. Back under $OUT:
#                  record.json, the model and its optimizer state (split into 15 MiB parts:
#                  `cat model.part* > model`), train_fast.log, gpuseg_check.txt. Resumes from
#                  .device/resume/{model,model.opt} when that is there (docs/training.md).
#                  Environment, only to dry-run it on a CPU machine: GPUSEG_SESSION_NO_ENV=1
#                  (no tools/device/env.sh), PYTHON, GPUSEG_EXE, GPUSEG_FAST_EXTRA (more flags).
set -uo pipefail
t_start=$(date +%s)
phase=${1:?phase}
secs=${2:-500}
[[ -n ${GPUSEG_SESSION_NO_ENV:-} ]] || source tools/device/env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/gpuseg_models /tmp/logs
log() { echo "[$(($(date +%s) - t_start)) s] $*"; }
# split FILE into 15 MiB parts in DIR (the device tool returns files of 16 MiB at most)
put() {
  if [[ $(stat -c %s "$1") -gt $((15 * 1024 * 1024)) ]]; then
    split -b 15M -d "$1" "$2/$(basename "$1").part"
  else
    cp "$1" "$2/"
  fi
}

if [[ $phase == train-fast ]]; then
  py=${PYTHON:-python3}
  exe=${GPUSEG_EXE:-build-gpu/gpuseg}
  run=/tmp/gpuseg_fast/full
  nvidia-smi >/tmp/logs/nvidia-smi.txt 2>&1
  # a checkpoint to resume from (docs/training.md, "Resume"): GPUSEG_FAST_RESUME_DIR (e.g. the
  # last call's /tmp/gpuseg_fast/full on the same warm machine), or the files of
  # .device/resume*/ (model and model.opt, whole or as .partNN, carried by earlier calls)
  resume=()
  rdir=/tmp/gpuseg_fast/resume
  rm -rf "$rdir" && mkdir -p "$rdir"
  if [[ -n ${GPUSEG_FAST_RESUME_DIR:-} ]]; then
    cp "$GPUSEG_FAST_RESUME_DIR"/model "$GPUSEG_FAST_RESUME_DIR"/model.opt "$rdir"/
  else
    for f in model model.opt; do
      whole=$(compgen -G ".device/resume*/$f" | head -1)
      if [[ -n $whole ]]; then
        cp "$whole" "$rdir/$f"
      elif compgen -G ".device/resume*/$f.part00" >/dev/null; then
        # the parts in order, wherever each was carried
        for part in $(compgen -G ".device/resume*/$f.part[0-9][0-9]" | awk -F/ '{print $NF" "$0}' |
          sort | cut -d' ' -f2); do cat "$part"; done >"$rdir/$f"
      fi
    done
  fi
  [[ -s $rdir/model && -s $rdir/model.opt ]] && resume=(--resume "$rdir")
  # training and its evaluations end 45 s before the phase: then the copy and gpuseg's check;
  # SIGTERM (checkpoint after the current epoch) 30 s before it at the latest
  end=$((t_start + secs - 45))
  rm -rf "$run"
  log "train_fast: deadline in $((end - $(date +%s))) s ${resume[*]}"
  # shellcheck disable=SC2086
  timeout -s TERM -k 15 $((secs - 30)) "$py" -u tools/train/train_fast.py train --device cuda \
    --pack .device/data/dsb2018.npz --nbase 2,32,64,128,256 --threads 4 \
    --time-budget $((end - $(date +%s))) --deadline "$end" --eval-reserve 100 --save-every 50 \
    --opt-bf16 --probe-also 2,16,32,64,128 --out "$run" "${resume[@]}" \
    ${GPUSEG_FAST_EXTRA:-} >/tmp/logs/train_fast.log 2>&1
  log "train_fast rc=$?: $(grep -E 'probe|validation|dev ' /tmp/logs/train_fast.log | cut -c 25- | tr '\n' ' ')"
  cp /tmp/logs/train_fast.log "$out/"
  [[ -s $run/record.json ]] && cp "$run/record.json" "$out/"
  # at most 8 files and 64 MiB come back: the model, then the selected one if it is another,
  # else the optimizer state (for a resume)
  [[ -s $run/model ]] && put "$run/model" "$out"
  if [[ -s $run/best ]]; then
    put "$run/best" "$out"
  elif [[ -s $run/model.opt ]]; then
    put "$run/model.opt" "$out"
  fi
  sel=$run/model
  [[ -s $run/best ]] && sel=$run/best
  if [[ -s $sel ]]; then
    img=$(compgen -G '../shared/data/dsb2018/dev/images/ee927e82*.png' | head -1)
    {
      "$exe" model info "$sel"
      [[ -n $img ]] && timeout 60 "$exe" segment "$img" --model "$sel" --diameter model \
        --save-dir /tmp/gpuseg_fast/check
      [[ -n $img ]] && cat /tmp/gpuseg_fast/check/*_segmentation.json
    } >"$out/gpuseg_check.txt" 2>&1
    log "gpuseg check rc=$?: $(tail -c 300 "$out/gpuseg_check.txt" | tr '\n' ' ')"
  fi
  log "end"
  exit 0
fi

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
elif [[ $phase == gemm ]]; then
  # gemm SECONDS [dry]: issue #15 in one call (~480 s; carry only .device/carry/bundle.tar.xz,
  # made by prepare.sh --no-pack): the ctest suite on NVIDIA's OpenCL (at most a third of the
  # time), then on the idle GPU bench/gpu_vs_cellpose.py's parts info,tune,net,segment: the GEMM
  # tuned on every shape of the full-width CPnet and the bundled model (its sets kept for the
  # parts after it; OUT/conv_params.c for the committed table), the network on 2048^2 (144
  # tiles) under AUTO, GEMM and direct against PyTorch fp32 and TF32, the whole pipeline against
  # Cellpose on 1024^2 and 2048^2 (full-width random CPnet and the bundled model); then
  # bench/gpu_report.py writes OUT/report.md. No part starts after SECONDS - 25. With `dry` (and
  # GPUSEG_SESSION_NO_ENV=1): the same on this machine (PoCL, PyTorch on the CPU, small sizes,
  # build/, ctest -R test_ops; OUT defaults to /tmp/gemm-dry, logs in OUT/logs) (docs/gpu.md).
  if [[ ${3:-} == dry ]]; then
    build=build
    py=${PYTHON:-/work/venv/bin/python}
    out=${OUT:-/tmp/gemm-dry}
    logs=$out/logs
    export GPUSEG_CACHE_DIR=${GPUSEG_CACHE_DIR:-$out/cache}
    extra=(--smoke --torch-device cpu --repeats 1 --net-sides 224 --segment-sides 256)
    tests=${GPUSEG_CTEST_ARGS:--R test_ops}
  else
    build=build-gpu
    py=python3
    logs=/tmp/logs
    nvidia-smi >$logs/nvidia-smi.txt 2>&1
    extra=(--repeats 3 --net-sides 2048 --segment-sides 1024,2048)
    tests=${GPUSEG_CTEST_ARGS:-}
  fi
  mkdir -p "$out" "$logs"
  log "devices: $($build/gpuseg devices 2>&1 | head -3 | tr '\n' ' ')"
  ctest_s=$((secs / 3))
  # shellcheck disable=SC2086
  (cd $build && GPUSEG_REQUIRE_DEVICE=1 timeout $ctest_s ctest -j4 --output-on-failure \
    --timeout $((ctest_s - 10)) $tests) >$logs/ctest.log 2>&1
  log "ctest rc=$?: $(grep -E 'tests passed|tests failed' $logs/ctest.log | tr '\n' ' ')"
  cp $logs/ctest.log "$out/ctest.log"
  # shellcheck disable=SC2086
  $py bench/gpu_vs_cellpose.py --build $build --out "$out" --parts info,tune,net,segment \
    --models "full=random,bundled=models/nuclei_gpuseg_v2" --net-variants auto,gemm,direct \
    "${extra[@]}" ${GPUSEG_BENCH_EXTRA:-} --deadline $((t_start + secs - 25)) \
    >$logs/bench.log 2>&1
  log "bench rc=$?"
  $py bench/gpu_report.py "$out" >>$logs/bench.log 2>&1
  log "report rc=$?"
  tar czf "$out/logs-$phase.tgz" -C "$(dirname "$logs")" "$(basename "$logs")" 2>/dev/null
  log "end"
  exit 0
else
  echo "session.sh: unknown phase '$phase'" >&2
  exit 2
fi
tar czf "$out/logs-$phase.tgz" -C /tmp logs 2>/dev/null
log "end"
