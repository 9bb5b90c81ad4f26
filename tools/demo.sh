#!/usr/bin/env bash
# tools/demo.sh: the README's first command. Sets up (Debian packages, build), then segments the
# bundled example (examples/data/nuclei.png: a 256x256 DSB2018 fluorescence image with 65
# nuclei, CC0; examples/data/README.md) with the bundled model and no flags but the outputs:
#   gpuseg segment -> nuclei_segmentation.bin + .json (labels; diameter estimated from a first
#                     pass) and nuclei_outlines.png (the picture in the README)
#   gpuseg eval    -> AP against the image's ground-truth labels
# then runs the path that needs no model: ground-truth labels --gpuseg flows--> Cellpose flow
# fields --gpuseg masks--> labels again --gpuseg eval--> AP (1.0).
# Offline: everything it uses is in the repository. Outputs go to out/demo/ (or $1).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
out=${1:-$here/out/demo}
mkdir -p "$out"
# Build noise stays out of sight: the setup log is printed only when setup fails.
echo "== setup: missing Debian packages, then the build (log: $out/setup.log)"
if ! bash tools/setup.sh >"$out/setup.log" 2>&1; then
  tail -n 40 "$out/setup.log" >&2
  echo "demo: setup failed; the whole log is $out/setup.log" >&2
  exit 1
fi
g=${GPUSEG_BUILD_DIR:-$here/build}/gpuseg

echo "== device"
"$g" devices
echo "== segment the bundled example with the bundled model (diameter estimated)"
"$g" segment examples/data/nuclei.png --save-dir "$out" --save-outlines
echo "== score it against the ground truth"
"$g" eval examples/data/nuclei_labels.png "$out/nuclei_segmentation.bin"
echo "== no network: ground-truth labels -> flows -> masks -> AP"
"$g" flows examples/data/nuclei_labels.png -o "$out/nuclei_gt_flows.npy"
"$g" masks "$out/nuclei_gt_flows.npy" -o "$out/nuclei_masks.tif"
"$g" eval examples/data/nuclei_labels.png "$out/nuclei_masks.tif"
echo "== wrote $out:"
echo "   nuclei_segmentation.bin + .json (uint16 labels; the .json says masks, diameter used,"
echo "   whether estimated, first-pass diameter, model), nuclei_outlines.png (mask outlines in red),"
echo "   nuclei_gt_flows.npy (float32 [3,256,256]: 5*dY, 5*dX, cellprob), nuclei_masks.tif"
