#!/usr/bin/env python3
"""Round trip on ground truth: labels -> flows -> masks, gpuseg and Cellpose side by side.

For every image of ../shared/data/dsb2018/dev and ../shared/data/usiigaci-phase/dev, the
ground-truth labels go through
  gpuseg:   `gpuseg flows LABELS -o F.npy` then `gpuseg masks F.npy -o M.npy` (defaults: QC 0.4,
            niter 200, min_size 15, cellprob threshold 0);
  Cellpose: dynamics.masks_to_flows (CPU) -> dP = 5 * flows, cellprob = +5 inside / -5 outside
            (the same convention `gpuseg flows` writes) -> dynamics.resize_and_compute_masks
            (CPU) with the same parameters;
and both are scored against the ground truth with cellpose.metrics.average_precision, pooled
over each data set (TP, FP, FN summed). Prints one JSON object. Not a test: it needs Python.

    .venv/bin/python bench/roundtrip_vs_cellpose.py build/gpuseg
"""
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
from cellpose import dynamics, io as cpio, metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
SETS = {"dsb2018/dev": "dsb2018/dev", "usiigaci-phase/dev": "usiigaci-phase/dev"}
THR = [0.5, 0.75, 0.9]


def labels_of(path):
    lab = cpio.imread(path)
    return np.asarray(lab).astype(np.int64)


def cellpose_roundtrip(lab):
    dev = torch.device("cpu")
    flows = dynamics.masks_to_flows(lab.astype(np.int32), device=dev)
    dp = (5.0 * flows).astype(np.float32)
    cellprob = np.where(lab > 0, 5.0, -5.0).astype(np.float32)
    return dynamics.resize_and_compute_masks(dp, cellprob, niter=200, cellprob_threshold=0.0,
                                             flow_threshold=0.4, interp=True, min_size=15,
                                             max_size_fraction=0.4, device=dev)


def main():
    gpuseg = sys.argv[1]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, rel in SETS.items():
            folder = os.path.join(DATA, rel, "labels")
            files = sorted(os.listdir(folder))
            tot = {"gpuseg": np.zeros((3, len(THR)), np.int64),
                   "cellpose": np.zeros((3, len(THR)), np.int64)}
            for f in files:
                path = os.path.join(folder, f)
                lab = labels_of(path)
                fl, mk = os.path.join(tmp, "f.npy"), os.path.join(tmp, "m.npy")
                subprocess.run([gpuseg, "flows", path, "-o", fl], check=True,
                               stdout=subprocess.DEVNULL)
                subprocess.run([gpuseg, "masks", fl, "-o", mk], check=True,
                               stdout=subprocess.DEVNULL)
                ours = np.load(mk).astype(np.int64)
                theirs = cellpose_roundtrip(lab)
                for side, pred in (("gpuseg", ours), ("cellpose", theirs)):
                    _, tp, fp, fn = metrics.average_precision([lab], [pred], threshold=THR)
                    tot[side] += np.stack([tp[0], fp[0], fn[0]]).astype(np.int64)
            res = {}
            for side, (tp, fp, fn) in tot.items():
                res[side] = {f"AP@{t}": round(float(tp[i] / (tp[i] + fp[i] + fn[i])), 4)
                             for i, t in enumerate(THR)}
                res[side].update({"TP@0.5": int(tp[0]), "FP@0.5": int(fp[0]),
                                  "FN@0.5": int(fn[0])})
            out[name] = {"images": len(files), **res}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
