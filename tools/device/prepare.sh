#!/usr/bin/env bash
# tools/device/prepare.sh: makes .device/ (ignored by git), everything a lent GPU machine needs
# that it cannot fetch: a Release build of gpuseg (tests and bench programs included) configured
# at /work/main/build-gpu, the shared libraries it links beyond glibc (Debian bookworm builds,
# glibc 2.36, which run on the machine's newer glibc), the part of ../shared/data the tests and
# bench read, Cellpose's wheels for the machine's python 3.12, and the dsb2018 training pack.
# Build, libraries, data subset and wheels travel as one .device/carry/bundle.tar.xz (binaries
# compress 6x; the device tool carries 64 MiB at most, the repository itself included), the
# training pack beside it. Then: the device tool's `run` with carry [".device/carry"], command
# `bash tools/device/session.sh PHASE SECONDS` (docs/gpu.md). With --no-pack the training pack
# is neither made nor linked (the `gemm` phase carries only the bundle).
set -euo pipefail
nopack=0
[[ ${1:-} == --no-pack ]] && nopack=1
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
dev=.device
mkdir -p "$dev"
# ignored by git through a .gitignore of its own (.git/info/exclude is not a file in a worktree)
[[ -f $dev/.gitignore ]] || echo '*' >"$dev/.gitignore"
# build, then a copy without object files
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DGPUSEG_WERROR=OFF >/dev/null
cmake --build build-gpu -j"$(nproc)" >/dev/null
rm -rf "$dev/build-gpu"
cp -r build-gpu "$dev/build-gpu"
find "$dev/build-gpu" \( -name "*.o" -o -name "*.a" -o -name "*.d" \) -delete
# libraries
mkdir -p "$dev/lib"
ldd build-gpu/gpuseg build-gpu/tests/test_io build-gpu/bench/bench_net |
  awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' | xargs -I{} cp -L {} "$dev/lib/"
# data the tests and bench read
S=../shared/data
D=$dev/shared/data
mkdir -p "$D/dsb2018" "$D/stardist-sample" "$D/usiigaci-phase/dev/images"
cp -r "$S/dsb2018/dev" "$D/dsb2018/"
cp -r "$S/stardist-sample/package_data" "$S/stardist-sample/tests_data" "$D/stardist-sample/"
cp -r "$S/usiigaci-phase/dev/labels" "$S/usiigaci-phase/dev/manifest.tsv" "$D/usiigaci-phase/dev/"
cp "$S/usiigaci-phase/dev/images/set5.tif" "$D/usiigaci-phase/dev/images/"
cp "$S/README.md" "$D/"
# Cellpose 3.1.1.3 and what it needs beyond the machine's own packages
[[ -x .venv/bin/python ]] || bash tools/setup_python.sh
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dev/whl" \
  cellpose==3.1.1.3 fastremap fill_voids natsort roifile
# the training pack (train + dev, exact training inputs)
[[ $nopack == 1 || -s $dev/data/dsb2018.npz ]] || .venv/bin/python tools/train/pack_dsb.py
mkdir -p "$dev/carry"
tar cf - -C "$dev" build-gpu lib shared whl | xz -T0 -6 >"$dev/carry/bundle.tar.xz.tmp"
mv "$dev/carry/bundle.tar.xz.tmp" "$dev/carry/bundle.tar.xz"
[[ $nopack == 1 ]] || ln -f "$dev/data/dsb2018.npz" "$dev/carry/dsb2018.npz"
du -shc "$dev"/carry/*
# the device tool carries 64 MiB in all: tracked files + untracked-not-ignored + the carry
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1)
carry=$(du -cbL "$dev"/carry/* | tail -1 | cut -f1)
total=$((tracked + ${untracked:-0} + carry))
echo "tracked $tracked + untracked ${untracked:-0} + carry $carry = $total bytes of 67108864"
if ((total > 67108864)); then
  echo "prepare.sh: $total bytes would travel, over the device tool's 64 MiB: leave something out" >&2
  exit 1
fi
