#!/usr/bin/env python3
"""Flows -> masks: gpuseg (bench_masks) against Cellpose 3.1's CPU compute_masks, same inputs.

Both sides use the dsb313 fixture's flows tiled to 512^2, 1024^2 and 2048^2 (np.tile, as bench_masks
does), QC on (flow_threshold 0.4), niter 200, min_size 15. Cellpose runs
dynamics.resize_and_compute_masks on the CPU in this process (one warm-up, then the median of
REPEATS); bench_masks runs as a subprocess and its labels are compared with Cellpose's
(AP at IoU 0.5 / 0.9, identical pixels). Sizes run one after the other, each gpuseg then
Cellpose, so that both sides of a ratio see about the same load on a shared machine. gpuseg's
program builds are excluded (bench_masks reports its cold run apart). Prints one JSON object
with the ratios.

    .venv/bin/python bench/masks_vs_cellpose.py build/bench/bench_masks [REPEATS [SIDES]]

SIDES is a comma-separated subset of 512,1024,2048 (default all three).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
from cellpose import dynamics, metrics  # noqa: E402
from importlib.metadata import version  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "masks")
SIDES = (512, 1024, 2048)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bench = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    sides = [int(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else SIDES
    flows = np.load(os.path.join(FIX, "dsb313_flows.npy"))
    result = {"cellpose": version("cellpose"), "torch_threads": torch.get_num_threads(),
              "repeats": repeats, "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        # one size at a time, gpuseg then Cellpose, so that both see about the same machine load
        for side in sides:
            out = subprocess.run([bench, FIX, str(repeats), "--save", tmp, "--side", str(side)],
                                 check=True, capture_output=True, text=True).stdout
            g = json.loads(out)
            result["device"] = g["device"]
            entry = g["sizes"][0]
            H, W = flows.shape[1:]
            big = np.tile(flows, (1, -(-side // H), -(-side // W)))[:, :side, :side].copy()
            dP, cp = big[:2], big[2]
            times, masks = [], None
            for r in range(repeats + 1):
                t0 = time.perf_counter()
                masks = dynamics.resize_and_compute_masks(
                    dP.copy(), cp.copy(), niter=200, cellprob_threshold=0.0, flow_threshold=0.4,
                    interp=True, min_size=15, max_size_fraction=0.4, device=torch.device("cpu"))
                if r > 0:
                    times.append(time.perf_counter() - t0)
            ours = np.load(os.path.join(tmp, f"gpuseg_{side}.npy"))
            ap = metrics.average_precision([masks.astype(np.int32)], [ours.astype(np.int32)],
                                           threshold=[0.5, 0.9])[0][0]
            cp_s = statistics.median(times)
            result["sizes"].append({
                "side": side, "n_masks_cellpose": int(masks.max()), "n_masks_gpuseg": int(ours.max()),
                "identical_pixels": float((masks == ours).mean()),
                "ap50": float(ap[0]), "ap90": float(ap[1]),
                "cellpose_cpu_s": round(cp_s, 4),
                "gpuseg_host_api_s": entry["host_api_s"]["median"],
                "gpuseg_device_api_s": entry["device_api_s"]["median"],
                "speedup_host_api": round(cp_s / entry["host_api_s"]["median"], 2),
                "speedup_device_api": round(cp_s / entry["device_api_s"]["median"], 2)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
