#!/usr/bin/env bash
# examples/build_against_install.sh PREFIX: builds examples/consumer.c against the gpuseg
# installed under PREFIX, with its CMake package (shared and static) and with its pkg-config
# file (shared and --static), and runs each program on the bundled example image.
set -euo pipefail
prefix=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d /tmp/gpuseg-examples-XXXXXX)
trap 'rm -rf "$out"' EXIT
img="$here/data/nuclei.png"

cmake -S "$here" -B "$out/cmake" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$out/cmake" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig:$prefix/lib/$(gcc -print-multiarch 2>/dev/null)/pkgconfig:${PKG_CONFIG_PATH:-}"
pkg-config --exists gpuseg || { echo "examples: pkg-config cannot find gpuseg.pc under $prefix" >&2; exit 1; }
libdir=$(pkg-config --variable=libdir gpuseg)
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror -o "$out/pc_shared" "$here/consumer.c" $(pkg-config --cflags --libs gpuseg) -Wl,-rpath,"$libdir"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror -o "$out/pc_static" "$here/consumer.c" $(pkg-config --cflags gpuseg) \
  "$libdir/libgpuseg.a" $(pkg-config --libs-only-l --static gpuseg | sed 's/-lgpuseg//')
for exe in "$out/cmake/consumer_shared" "$out/cmake/consumer_static" "$out/pc_shared" "$out/pc_static"; do
  "$exe" "$img" >"$out/log" || { cat "$out/log"; echo "examples: $exe failed" >&2; exit 1; }
  grep -q "256x256" "$out/log" || { cat "$out/log"; echo "examples: $exe gave no image info" >&2; exit 1; }
done
echo "examples: consumer built and ran 4 ways (CMake shared/static, pkg-config shared/static)"
