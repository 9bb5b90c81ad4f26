#!/usr/bin/env python3
"""CPnet forward: gpuseg (bench_net, OpenCL) vs Cellpose's CPnet on PyTorch (CPU) on the same
tiles, in one script. A full-width net (nbase [2, 32, 64, 128, 256], random weights with random
batch-norm statistics, torch.manual_seed(0)) is saved with CPnet.save_model; a 512^2 and a
1024^2 crop of a dsb2018 grey image are normalised, padded and cut into 224^2 tiles exactly as
core.run_net does (transforms.normalize_img, get_pad_yx, make_tiles, overlap 0.1); both sides run
the tiles in batches of 8. PyTorch gets torch.set_num_threads(THREADS) (default 2) and eval mode
(no mkldnn, as CellposeModel on a CPU without it). Prints per size: both times (median of
REPEATS warm runs), the ratio, and the max abs difference of the outputs relative to their range.

    .venv/bin/python bench/net_vs_cellpose.py --bench build/bench/bench_net [--threads 2]
        [--repeats 3] [--sizes 512,1024]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import cv2
import numpy as np
import torch

from cellpose import resnet_torch, transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(ROOT, "..", "shared", "data", "dsb2018", "dev", "images",
                     "1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e.png")


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
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = resnet_torch.CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False)
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.empty(n).uniform_(0.5, 1.5, generator=g)
            m.bias.data = torch.empty(n).normal_(0, 0.2, generator=g)
            m.running_mean.data = torch.empty(n).normal_(0, 0.3, generator=g)
            m.running_var.data = torch.empty(n).uniform_(0.5, 2.0, generator=g)
    net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "full.pth")
        net.save_model(model)
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
            print(json.dumps({"size": side, "tiles": len(tiles), "gpuseg_device": g_res["device"],
                              "gpuseg_median_s": g_res["median_s"], "gpuseg_cold_s": g_res["cold_s"],
                              "torch_median_s": round(t_torch, 4), "torch_threads": a.threads,
                              "ratio_torch_over_gpuseg": round(t_torch / g_res["median_s"], 3),
                              "max_abs_err": err, "err_over_range": err / rng}))


if __name__ == "__main__":
    main()
