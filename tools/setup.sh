#!/usr/bin/env bash
# tools/setup.sh: install the Debian packages gpuseg needs (only those missing; non-interactive;
# as root or through sudo), then configure and build into build/ (or $GPUSEG_BUILD_DIR).
# Idempotent: a second run installs nothing and only rebuilds what changed.
# Options: --no-build (packages only). Environment: GPUSEG_CMAKE_ARGS (extra cmake arguments).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${GPUSEG_BUILD_DIR:-$here/build}

packages=(
  build-essential cmake pkg-config      # compiler and build
  ocl-icd-opencl-dev opencl-headers     # OpenCL ICD loader and headers
  pocl-opencl-icd clinfo                # OpenCL on the CPU (PoCL), and a device lister
  libclblast-dev                        # GEMM for the network's convolutions
  libstb-dev                            # PNG/JPEG/BMP/PNM/GIF reading and PNG writing
  libtiff-dev                           # TIFF reading and writing
  libjansson-dev                        # JSON reading and writing (sidecars, --json, GeoJSON)
  nettle-dev                            # SHA-256 (program-cache keys, kernel hashes)
  zlib1g-dev                            # CRC-32 (ZIP entries, PNG chunks, shm payloads)
  check                                 # unit-test framework
  clang-format                          # formatting check in tools/test.sh
  clang-15                              # second compiler for the -Werror build (PoCL brings it anyway)
  python3-numpy                         # runs the Python interop example in the tests (never needed at run time)
  python3-venv                          # the venv of the Python package tests (tools/test_python.sh)
  valgrind                              # memcheck of the host-side tests (tools/valgrind.sh)
)

missing=()
for p in "${packages[@]}"; do
  [[ $p == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all Debian packages present"
fi

[[ ${1:-} == --no-build ]] && exit 0

# shellcheck disable=SC2086
cmake -S "$here" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${GPUSEG_CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" -j"$(nproc)"
echo "setup: built $build_dir/gpuseg"
