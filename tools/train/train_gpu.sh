#!/usr/bin/env bash
# tools/train/train_gpu.sh NAME NBASE BUDGET_S OUTDIR [HARD_S]: one training on a lent CUDA
# machine (python3 with torch+CUDA, numpy, scipy, numba, cv2, tifffile, tqdm; no network).
# Installs Cellpose 3.1.1.3 and its missing pure/binary deps from .device/whl into /tmp/site
# (once per machine), then runs train_nuclei.py on the
# .device/data/dsb2018.npz pack (tools/train/pack_dsb.py) with --time-budget BUDGET_S
# (training after the flows; add ~60 s for install, pack, flows and the dev evaluation).
# HARD_S (default BUDGET_S+150) kills the run with SIGTERM; then the last 10-epoch checkpoint
# is copied to OUTDIR/NAME.ckpt. Files over 15 MiB are split into NAME*.partNN (the device tool
# returns files of 16 MiB at most): join with `cat NAME.part* > NAME`.
# Writes OUTDIR/NAME (weights), NAME.json (recipe, probe, dev AP), NAME.log.
set -uo pipefail
[[ $# -ge 4 ]] || { echo "usage: $0 NAME NBASE BUDGET_S OUTDIR [HARD_S]" >&2; exit 2; }
name=$1 nbase=$2 budget=$3 outdir=$4 hard=${5:-$(($3 + 150))}
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here" || exit 1
mkdir -p "$outdir"
log=$outdir/$name.log
site=${GPUSEG_SITE:-/tmp/site}  # overridable only to test this script elsewhere
if [[ ! -f $site/.gpuseg_ok ]]; then
  # lock-free for two concurrent calls: install into a private folder, then rename it into
  # place (a rename onto an existing folder fails, and the other call's copy is used)
  tmp=$site.$$
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$tmp" .device/whl/*.whl && touch "$tmp/.gpuseg_ok" &&
    { mv -T "$tmp" "$site" 2>/dev/null || rm -rf "$tmp"; }
fi
[[ -f $site/.gpuseg_ok ]] || { echo "train_gpu: wheel install into $site failed" >&2; exit 1; }
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
# 16 cores shared by two concurrent trainings: 6 threads each for torch/OpenMP/numba
export OMP_NUM_THREADS=6 MKL_NUM_THREADS=6 OPENBLAS_NUM_THREADS=6 NUMBA_NUM_THREADS=6
export PYTHONUNBUFFERED=1 GPUSEG_TRAIN_CACHE=/tmp/gpuseg_train_cache
export NUMBA_CACHE_DIR=/tmp/numba_cache_$name
ckpt=$GPUSEG_TRAIN_CACHE/runs/$name/models/net
rm -rf "$GPUSEG_TRAIN_CACHE/runs/$name" # never hand back a stale checkpoint of an earlier run
echo "train_gpu: $name nbase=$nbase budget=${budget}s hard=${hard}s -> $outdir ($(date -u +%T))" |
  tee "$log" >&2
# GPUSEG_TRAIN_DEVICE / GPUSEG_TRAIN_EXTRA exist only to dry-run this script on a CPU machine
# shellcheck disable=SC2086
timeout -s TERM -k 20 "$hard" python3 -u tools/train/train_nuclei.py train \
  --device "${GPUSEG_TRAIN_DEVICE:-cuda}" --pack .device/data/dsb2018.npz --nbase "$nbase" \
  --time-budget "$budget" --epochs 500 --threads 6 --out "$outdir/$name" \
  ${GPUSEG_TRAIN_EXTRA:-} >>"$log" 2>&1
rc=$?
echo "train_gpu: $name exit $rc ($(date -u +%T))" | tee -a "$log" >&2
if [[ ! -f $outdir/$name && -f $ckpt ]]; then
  cp "$ckpt" "$outdir/$name.ckpt" && echo "train_gpu: kept checkpoint $outdir/$name.ckpt" | tee -a "$log" >&2
fi
for f in "$outdir/$name" "$outdir/$name.ckpt"; do
  if [[ -f $f && $(stat -c %s "$f") -gt $((15 * 1024 * 1024)) ]]; then
    sha256sum "$f" | tee -a "$log" >&2
    split -b 15M -d "$f" "$f.part" && rm "$f"
  fi
done
exit $rc
