#!/usr/bin/env python3
"""CPnet forward: gpuseg (bench_net, OpenCL) vs Cellpose's CPnet on PyTorch (CPU) on the same
tiles, in one script. A full-width net (common.full_width_net: nbase [2, 32, 64, 128, 256],
random weights with random batch-norm statistics, torch.manual_seed(0)) is saved with
CPnet.save_model (--model bundled: models/nuclei_gpuseg_v2 instead, its narrow widths); a 512^2 and a
1024^2 crop of a dsb2018 grey image are normalised, padded and cut into 224^2 tiles exactly as
core.run_net does (transforms.normalize_img, get_pad_yx, make_tiles, overlap 0.1); both sides run
the tiles in batches of 8. PyTorch gets torch.set_num_threads(THREADS) (default 2) and eval mode
(no mkldnn, as CellposeModel on a CPU without it). Prints per size: both times (median of
REPEATS warm runs), the ratio, and the max abs difference of the outputs relative to their range.
With BENCH_NET_PROFILE=1 in the environment, bench_net's per-layer profile (one more pass with a
wait after every op) is passed through under "profile".

    .venv/bin/python bench/net_vs_cellpose.py --bench build/bench/bench_net [--threads 2]
        [--repeats 3] [--sizes 512,1024] [--model full|bundled]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

from cellpose import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = common.DSB_IMAGE


def tiles_for(side):
    img = cv2.imread(IMAGE, cv2.IMREAD_UNCHANGED)[:side, :side, 0]
    x = transforms.normalize_img(transforms.convert_image(img, [0, 0], nchan=2))
    x = x.transpose(2, 0, 1)
    ypad1, ypad2, xpad1, xpad2 = transforms.get_pad_yx(side, side)
    x = np.pad(x, ((0, 0), (ypad1, ypad2), (xpad1, xpad2)))
    t = transforms.make_tiles(x, bsize=224, augment=False, tile_overlap=0.1)[0]
    return np.ascontiguousarray(t.reshape(-1, 2, 224, 224).astype(np.float32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "bench_net"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--model", default="full", choices=["full", "bundled"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if a.model == "full":
            net = common.full_width_net(0)
            model = os.path.join(tmp, "full.pth")
            net.save_model(model)
        else:
            model = common.BUNDLED_MODEL
            net = common.bundled_cellpose_model(model).net
        for side in [int(s) for s in a.sizes.split(",")]:
            tiles = tiles_for(side)
            tin, tout = os.path.join(tmp, "tiles.npy"), os.path.join(tmp, "out.npy")
            np.save(tin, tiles)
            res = subprocess.run([a.bench, model, tin, tout, str(a.repeats)], check=True,
                                 capture_output=True, text=True)
            g_res = json.loads(res.stdout)
            got = np.load(tout)
            times, outs = [], []
            with torch.no_grad():
                for r in range(a.repeats + 1):  # first run = warm-up
                    t0 = time.perf_counter()
                    ys = [net(torch.from_numpy(tiles[i:i + 8]))[0] for i in range(0, len(tiles), 8)]
                    if r:
                        times.append(time.perf_counter() - t0)
                    else:
                        outs = torch.cat(ys).numpy()
            t_torch = float(np.median(times))
            err = float(np.abs(got - outs).max())
            rng = float(outs.max() - outs.min())
            print(json.dumps({"size": side, "model": a.model, "nbase": g_res["nbase"],
                              "tiles": len(tiles), "gpuseg_device": g_res["device"],
                              "gpuseg_median_s": g_res["median_s"], "gpuseg_cold_s": g_res["cold_s"],
                              "torch_median_s": round(t_torch, 4), "torch_threads": a.threads,
                              "ratio_torch_over_gpuseg": round(t_torch / g_res["median_s"], 3),
                              "max_abs_err": err, "err_over_range": err / rng,
                              "conv_choices": g_res.get("conv_choices"),
                              "profile_total_s": g_res.get("profile_total_s"),
                              "profile": g_res.get("profile")}), flush=True)


if __name__ == "__main__":
    main()
