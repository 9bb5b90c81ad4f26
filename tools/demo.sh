#!/usr/bin/env bash
# tools/demo.sh: the README's first command. Sets up (Debian packages, build), then runs the
# end-to-end job that works today on the bundled example (examples/data: a 256x256 DSB2018
# fluorescence image with 65 nuclei and its ground-truth labels, CC0):
#   ground-truth labels --gpuseg flows--> Cellpose flow fields (device)
#                       --gpuseg masks--> labels again (device mask reconstruction + QC)
#                       --gpuseg eval --> AP against the ground truth
# and then the main job with the network: `gpuseg segment` on the image with gpuseg's first
# trained model (models/nuclei_gpuseg_v0: a small net trained for 35 minutes on one CPU core;
# weak, see models/README.md; a proper bundled model is issue #6), scored against the truth.
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
"$g" flows examples/data/nuclei_labels.png -o "$out/nuclei_gt_flows.npy"
"$g" masks "$out/nuclei_gt_flows.npy" -o "$out/nuclei_masks.tif"
"$g" masks "$out/nuclei_gt_flows.npy" -o "$out/nuclei_masks.bin"
"$g" eval examples/data/nuclei_labels.png "$out/nuclei_masks.tif"
echo "== segment the image with the network (model v0) and score it"
"$g" segment examples/data/nuclei.png --model models/nuclei_gpuseg_v0 --save-dir "$out" --save-flows
"$g" eval examples/data/nuclei_labels.png "$out/nuclei_segmentation.bin"
echo "== wrote $out: nuclei_gt_flows.npy (float32 [3,256,256]: 5*dY, 5*dX, cellprob),"
echo "   nuclei_masks.tif and nuclei_masks.bin + .json (uint16 labels), and from segment:"
echo "   nuclei_segmentation.bin + .json, nuclei_flows.npy and nuclei_style.npy"
