#!/usr/bin/env python3
"""train_fast.py against Cellpose's own train.train_seg on the CPU: the same images (the first N
of dsb2018/train outside the validation split), seed, widths, epochs and recipe; per-epoch and
per-batch training losses side by side, written as JSON (tools/train/compare_train_seg.json).

Both start from the same initial weights (torch.manual_seed(seed), then CPnet) and draw the
same random numbers (numpy reseeded with the epoch number, one permutation, then five numbers
per image for flip, angle, scale and crop), so they see the same crops; epoch 0 runs at
learning rate 0 (Cellpose's warm-up starts at 0), so its losses compare the augmentation and
the loss alone. Differences: OpenCV's warpAffine vs gathers on the device (sub-pixel rounding),
float summation order; after the first steps at lr > 0 the two runs drift apart like any two
trainings differing in the last bits.

Usage (repository root): .venv/bin/python tools/train/compare_train_seg.py \\
    [--n-img 32 --epochs 8 --nbase 2,8,16,32,64 --seed 0 --threads 1]
"""
import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_fast as tf  # noqa: E402
import train_nuclei as tn  # noqa: E402
from cellpose import train  # noqa: E402


def run_train_seg(a, td):
    """Cellpose's train_seg on the same subset; per-batch losses from a wrapper of its loss."""
    ns = argparse.Namespace(pack=None, val_split=tf.VAL_SPLIT, n_img=a.n_img, val_limit=0)
    (ids, imgs, lbls), _ = tf.load_train_val(ns)
    flows = tn.flows_cached("train", ids, lbls, device=torch.device("cpu"))
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    net = tn.build_net([int(x) for x in a.nbase.split(",")])
    batch = []
    orig = train._loss_fn_seg

    def wrapped(lbl, y, device):
        loss = orig(lbl, y, device)
        batch.append(round(float(loss.item()), 6))
        return loss

    train._loss_fn_seg = wrapped
    t0 = time.time()
    try:
        _, losses, _ = train.train_seg(
            net, train_data=imgs, train_labels=flows, channels=None, normalize=True,
            batch_size=8, learning_rate=0.005, weight_decay=1e-5, SGD=False,
            n_epochs=a.epochs, rescale=True, bsize=224, min_train_masks=5,
            save_path=str(td), save_every=1000, model_name="ref")
    finally:
        train._loss_fn_seg = orig
    secs = time.time() - t0
    per = len(batch) // a.epochs
    return {"train_loss": [round(float(x), 6) for x in losses],
            "batch_losses": [batch[e * per:(e + 1) * per] for e in range(a.epochs)],
            "seconds": round(secs, 1)}


def run_fast(a, td):
    cmd = [sys.executable, str(HERE / "train_fast.py"), "train", "--device", "cpu",
           "--nbase", a.nbase, "--n-img", str(a.n_img), "--epochs", str(a.epochs),
           "--seed", str(a.seed), "--threads", str(a.threads), "--no-eval", "--batch-losses",
           "--out", str(td / "fast")]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    rec = json.loads((td / "fast" / "record.json").read_text())
    return {"train_loss": [h["train_loss"] for h in rec["history"]],
            "batch_losses": [h["batch_losses"] for h in rec["history"]],
            "seconds": round(time.time() - t0, 1), "train_seconds": rec["train_seconds"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-img", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--nbase", default="2,8,16,32,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "compare_train_seg.json")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        ref = run_train_seg(a, td)
        fast = run_fast(a, td)
    r = np.array(ref["train_loss"])
    f = np.array(fast["train_loss"])
    b0r, b0f = np.array(ref["batch_losses"][0]), np.array(fast["batch_losses"][0])
    res = {"what": "train_fast.py vs cellpose.train.train_seg, CPU, same data/seed/recipe",
           "n_img": a.n_img, "epochs": a.epochs, "nbase": a.nbase, "seed": a.seed,
           "threads": a.threads, "batch_size": 8, "lr": 0.005, "optimizer": "AdamW",
           "train_seg": ref, "train_fast": fast,
           "epoch_loss_rel_diff": [round(float(x), 5) for x in np.abs(f - r) / r],
           "epoch0_batch_rel_diff_max": round(float((np.abs(b0f - b0r) / b0r).max()), 6)}
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("train_seg", "train_fast")}))
    print("epoch  train_seg  train_fast")
    for e in range(a.epochs):
        print(f"{e:5d}  {r[e]:.4f}     {f[e]:.4f}")


if __name__ == "__main__":
    main()
