#!/usr/bin/env bash
# tools/demo.sh: the README's first command. Sets up (Debian packages, build), then runs the
# end-to-end job that works today on the bundled example (examples/data: a 256x256 DSB2018
# fluorescence image with 65 nuclei and its ground-truth labels, CC0):
#   ground-truth labels --gpuseg flows--> Cellpose flow fields (device)
#                       --gpuseg masks--> labels again (device mask reconstruction + QC)
#                       --gpuseg eval --> AP against the ground truth
# The CPnet network (image -> flows, `gpuseg segment`) is not there yet (issue #4).
# Outputs go to out/demo/ (or $1).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash tools/setup.sh
g=${GPUSEG_BUILD_DIR:-$here/build}/gpuseg
out=${1:-$here/out/demo}
mkdir -p "$out"

echo "== device"
"$g" devices
echo "== the bundled example"
"$g" info examples/data/nuclei.png examples/data/nuclei_labels.png
echo "== labels -> flows -> masks -> AP"
"$g" flows examples/data/nuclei_labels.png -o "$out/nuclei_flows.npy"
"$g" masks "$out/nuclei_flows.npy" -o "$out/nuclei_masks.tif"
"$g" masks "$out/nuclei_flows.npy" -o "$out/nuclei_masks.bin"
"$g" eval examples/data/nuclei_labels.png "$out/nuclei_masks.tif"
echo "== wrote $out: nuclei_flows.npy (float32 [3,256,256]: 5*dY, 5*dX, cellprob),"
echo "   nuclei_masks.tif and nuclei_masks.bin + .json (uint16 labels)"
