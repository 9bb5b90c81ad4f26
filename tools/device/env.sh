# tools/device/env.sh: sourced at the start of every command on a lent GPU machine (the device
# tool): the carried Debian libraries (ocl-icd, CLBlast, libtiff, stb, check's subunit) on the
# library path, NVIDIA's OpenCL driver registered with ocl-icd, the carried Release build at the
# absolute paths it was configured with (/work/main/build-gpu), the carried subset of
# ../shared/data beside the repository, and Cellpose's wheels installed for the machine's python3.
# Made here by tools/device/prepare.sh; see docs/gpu.md.
repo=$(pwd)
if [[ ! -d $repo/.device/lib ]]; then
  python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
    "$repo/.device/carry/bundle.tar.xz" "$repo/.device"
  mkdir -p "$repo/.device/data"
  ln -sf "$repo/.device/carry/dsb2018.npz" "$repo/.device/data/dsb2018.npz"
fi
export LD_LIBRARY_PATH=$repo/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p /tmp/icd
if [[ ! -s /tmp/icd/nvidia.icd ]]; then
  lib=$(ldconfig -p | awk '/libnvidia-opencl.so.1/ {print $NF; exit}')
  [[ -n $lib ]] || lib=$(find / -xdev -name 'libnvidia-opencl.so.1' 2>/dev/null | head -1)
  [[ -n $lib ]] || lib=$(find /usr/local/nvidia /usr/lib* -name 'libnvidia-opencl.so*' 2>/dev/null | head -1)
  echo "${lib:-libnvidia-opencl.so.1}" >/tmp/icd/nvidia.icd
fi
export OCL_ICD_VENDORS=/tmp/icd
# the build's absolute paths: /work/main/build-gpu/... and /work/main/../shared/data
mkdir -p /work
[[ -e /work/main ]] || ln -s "$repo" /work/main
[[ -e $repo/build-gpu ]] || ln -s "$repo/.device/build-gpu" "$repo/build-gpu"
# the kernel resolves /work/main/.. physically: the parent of the folder the link points to
parent=$(dirname "$(cd /work/main && pwd -P)")
[[ -e $parent/shared ]] || ln -s "$repo/.device/shared" "$parent/shared"
if [[ ! -f /tmp/site/.gpuseg_ok ]]; then  # the marker tools/train/train_gpu.sh checks too
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$repo"/.device/whl/*.whl && touch /tmp/site/.gpuseg_ok
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
