#!/usr/bin/env python3
"""Train gpuseg's own nuclei CPnet with Cellpose's training code (cellpose<4, PyTorch).

Data: dsb2018/train (CC0) for training, dsb2018/dev for validation (see ../shared/data/README.md).
Input convention (the same as the shipped model is run with, Cellpose channels=[0,0]):
channel 0 = mean of R,G,B of the 8-bit PNG (alpha dropped), channel 1 = zeros.
Flows come from Cellpose's own labels->flows and are cached under /tmp (never in the repository).
Writes a Cellpose-format weights file (torch.save of the CPnet state dict) plus <model>.json.

Usage (from the repository root, with the Cellpose virtual environment):
  .venv/bin/python tools/train/train_nuclei.py time  --nbase 2,16,32,64,128 --n-img 64
  .venv/bin/python tools/train/train_nuclei.py train --nbase 2,16,32,64,128 --epochs 40 \
      --out models/nuclei_gpuseg_v0
  .venv/bin/python tools/train/train_nuclei.py eval  --model models/nuclei_gpuseg_v1
"""
import os

# One core for us, one left for others: set before numpy/torch/numba load their pools.
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import hashlib
import json
import logging
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cellpose import dynamics, metrics, models, resnet_torch, train, utils

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("GPUSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "dsb2018"
CACHE = Path(os.environ.get("GPUSEG_TRAIN_CACHE", "/tmp/gpuseg_train_cache"))
DIAM_MEAN = 17.0  # Cellpose's nuclei convention: objects rescaled to 17 px during training
CHANNELS = [0, 0]  # how the model is run: grey = mean of RGB, second channel empty

log = logging.getLogger("train_nuclei")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(split):
    """Image ids of a split, in manifest order (the order is part of the recipe)."""
    lines = (DATA / split / "manifest.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    col = head.index("image_id")
    return [ln.split("\t")[col] for ln in lines[1:] if ln.strip()]


def load_rgb(path):
    """8-bit RGBA/RGB/grey PNG -> HxWx3 float32 in R,G,B order (alpha dropped)."""
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise SystemExit(f"train_nuclei: {path}: cannot read image")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    else:
        a = a[:, :, :3][:, :, ::-1]  # OpenCV gives BGR(A)
    return np.ascontiguousarray(a).astype(np.float32)


def to_two_channel(rgb):
    """The training input: what Cellpose's channels=[0,0] makes of an RGB image, channel-first."""
    grey = rgb.mean(axis=2)
    return np.stack([grey, np.zeros_like(grey)]).astype(np.float32)


def load_labels(path):
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None or a.ndim != 2:
        raise SystemExit(f"train_nuclei: {path}: cannot read a single-channel label image")
    return a.astype(np.int32)


def load_split(split, limit=None):
    ids = read_manifest(split)
    if limit:
        ids = ids[:limit]
    imgs = [to_two_channel(load_rgb(DATA / split / "images" / f"{i}.png")) for i in ids]
    lbls = [load_labels(DATA / split / "labels" / f"{i}.png") for i in ids]
    return ids, imgs, lbls


def flows_cached(split, ids, lbls):
    """Cellpose's labels->flows (4xHxW: labels, cell mask, flowY, flowX), cached per image
    under CACHE/<split>-<manifest sha>/ so reruns skip the slow part."""
    d = CACHE / f"{split}-{sha256_file(DATA / split / 'manifest.tsv')[:16]}"
    d.mkdir(parents=True, exist_ok=True)
    out, todo = [None] * len(ids), []
    for k, i in enumerate(ids):
        f = d / f"{i}.npy"
        if f.exists():
            out[k] = np.load(f)
        else:
            todo.append(k)
    if todo:
        t0 = time.time()
        log.info("computing flows for %d %s images (cache %s)", len(todo), split, d)
        for k in todo:
            fl = dynamics.labels_to_flows([lbls[k].copy()], device=torch.device("cpu"))[0]
            fd, tmp = tempfile.mkstemp(dir=d, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, fl)
            os.replace(tmp, d / f"{ids[k]}.npy")
            out[k] = fl
        log.info("flows done in %.1f s", time.time() - t0)
    return out


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_net(nbase):
    # CellposeModel hardcodes [nchan,32,64,128,256]; a smaller net is built here directly.
    return resnet_torch.CPnet(list(nbase), nout=3, sz=3, mkldnn=False, max_pool=True,
                              diam_mean=DIAM_MEAN)


def nbase_of_file(path):
    """Read the widths back from the state dict, so eval needs no side information."""
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    nb = [sd["downsample.down.res_down_0.conv.conv_0.2.weight"].shape[1]]
    k = 0
    while f"downsample.down.res_down_{k}.conv.conv_0.2.weight" in sd:
        nb.append(sd[f"downsample.down.res_down_{k}.conv.conv_0.2.weight"].shape[0])
        k += 1
    return nb


class StylePadCPnet(resnet_torch.CPnet):
    """CPnet whose style vector is zero-padded to 256 values on output. Cellpose 3.1.1.3's
    core.run_net allocates styles as (n, 256), i.e. it assumes nbase[-1] == 256 and fails
    with a smaller net; padding changes nothing else (styles only feed size models)."""

    def forward(self, data):
        out = super().forward(data)
        style = out[1]
        if style.shape[1] < 256:
            style = torch.nn.functional.pad(style, (0, 256 - style.shape[1]))
        return (out[0], style) + tuple(out[2:])


def cellpose_model(path):
    """A CellposeModel running this file: CellposeModel would build nbase [2,32,...], so the
    net is swapped for one with the file's widths (same diam_mean/diam_labels handling)."""
    nb = nbase_of_file(path)
    m = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=DIAM_MEAN)
    net = StylePadCPnet(list(nb), nout=3, sz=3, mkldnn=False, max_pool=True,
                        diam_mean=DIAM_MEAN)
    net.load_model(str(path), device=torch.device("cpu"))
    m.net = net
    m.nbase = nb
    m.pretrained_model = str(path)
    m.diam_mean = float(m.net.diam_mean.data.cpu().numpy()[0])
    m.diam_labels = float(m.net.diam_labels.data.cpu().numpy()[0])
    return m, nb


def evaluate(path):
    """Pooled AP@0.5/0.75/0.9 over the dev images, Cellpose running the file with channels [0,0]
    on the RGB image; diameter None (uses the model's diam_labels) and the true per-image one."""
    m, nb = cellpose_model(path)
    ids = read_manifest("dev")
    rgbs = [load_rgb(DATA / "dev" / "images" / f"{i}.png") for i in ids]
    # check that Cellpose's channels=[0,0] conversion is the one trained on
    from cellpose import transforms
    conv = transforms.convert_image(rgbs[0], channels=CHANNELS, channel_axis=2)
    assert np.allclose(conv.transpose(2, 0, 1), to_two_channel(rgbs[0]), atol=1e-3)
    gts = [load_labels(DATA / "dev" / "labels" / f"{i}.png") for i in ids]
    true_d = [float(utils.diameters(g)[0]) for g in gts]
    thr = [0.5, 0.75, 0.9]
    res = {"nbase": nb, "diam_mean": m.diam_mean, "diam_labels": m.diam_labels,
           "thresholds": thr, "images": ids, "true_diameters": true_d}
    for mode in ("diameter_none", "diameter_true"):
        preds, t0 = [], time.time()
        for k, img in enumerate(rgbs):
            d = None if mode == "diameter_none" else true_d[k]
            preds.append(m.eval(img, channels=CHANNELS, channel_axis=2, diameter=d)[0])
        ap, tp, fp, fn = metrics.average_precision(gts, preds, threshold=thr)
        tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
        pooled = tp / np.maximum(tp + fp + fn, 1)
        res[mode] = {"ap_pooled": [round(float(x), 4) for x in pooled],
                     "tp": tp.astype(int).tolist(), "fp": fp.astype(int).tolist(),
                     "fn": fn.astype(int).tolist(),
                     "ap_per_image_at_0.5": [round(float(x), 4) for x in ap[:, 0]],
                     "n_pred": [int(p.max()) for p in preds], "seconds": round(time.time() - t0, 1)}
        log.info("dev %s: AP@0.5/0.75/0.9 pooled = %s", mode, res[mode]["ap_pooled"])
    return res


def run_train(a, nbase, epochs, n_img=None, out=None):
    seed_all(a.seed)
    ids, imgs, lbls = load_split("train", n_img)
    flows = flows_cached("train", ids, lbls)
    net = build_net(nbase)
    if a.init:
        # continue from an earlier run's weights (same widths); train_seg's warm-up and final
        # lr halving run again, so this is "more epochs", not a different optimiser schedule
        net.load_model(str(a.init), device=torch.device("cpu"))
        if nbase_of_file(a.init) != list(nbase):
            raise SystemExit(f"train_nuclei: {a.init}: widths {nbase_of_file(a.init)} != --nbase")
    t0 = time.time()
    # train_seg saves into <save_path>/models/<name>: keep that (and its every-10-epochs
    # checkpoint, useful if a run is cut short) under the /tmp cache, out of the repository.
    td = CACHE / "runs" / (out.name if out else "timing")
    td.mkdir(parents=True, exist_ok=True)
    _, tr_loss, _ = train.train_seg(
        net, train_data=imgs, train_labels=flows, channels=None, normalize=True,
        batch_size=a.batch_size, learning_rate=a.lr, weight_decay=a.weight_decay,
        SGD=False, n_epochs=epochs, nimg_per_epoch=a.nimg_per_epoch, rescale=True,
        bsize=224, min_train_masks=5, save_path=str(td), save_every=10,
        model_name="net")
    secs = time.time() - t0
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        net.save_model(str(tmp))  # torch.save(state_dict), Cellpose's own format
        os.replace(tmp, out)
    return net, ids, tr_loss, secs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cmd", choices=["time", "train", "eval"])
    p.add_argument("--nbase", default="2,16,32,64,128")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-img", type=int, default=None, help="use only the first N train images")
    p.add_argument("--nimg-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "models" / "nuclei_gpuseg_v1")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--init", type=Path, default=None,
                   help="start from this model file's weights (continue an earlier run)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    torch.set_num_threads(a.threads)
    nbase = [int(x) for x in a.nbase.split(",")]

    if a.cmd == "eval":
        print(json.dumps(evaluate(a.model or a.out), indent=1))
        return
    if a.cmd == "time":
        _, ids, tr_loss, secs = run_train(a, nbase, a.epochs, n_img=a.n_img)
        print(json.dumps({"nbase": nbase, "n_img": len(ids), "epochs": a.epochs,
                          "seconds": round(secs, 1),
                          "seconds_per_image_step": round(secs / (a.epochs * len(ids)), 4),
                          "train_loss": [round(float(x), 4) for x in tr_loss]}))
        return

    t_start = time.time()
    net, ids, tr_loss, secs = run_train(a, nbase, a.epochs, n_img=a.n_img, out=a.out)
    nimg = a.nimg_per_epoch or len(ids)
    ev = evaluate(a.out)
    from importlib.metadata import version
    man = DATA / "train" / "manifest.tsv"
    counts = [int(ln.split("\t")[3]) for ln in man.read_text().splitlines()[1:] if ln.strip()]
    counts = counts[:len(ids)]  # the --n-img subset, in manifest order
    n_masks = sum(counts)
    n_used = sum(c >= 5 for c in counts)  # train_seg drops images with < min_train_masks
    rec = {
        "model": a.out.name, "format": "Cellpose 3 CPnet state dict (torch.save)",
        "model_sha256": sha256_file(a.out), "model_bytes": a.out.stat().st_size,
        "data": {"train": "dsb2018/train", "n_images": len(ids), "n_masks": n_masks,
                 "n_images_used": n_used,
                 "manifest_sha256": sha256_file(man),
                 "dev_manifest_sha256": sha256_file(DATA / "dev" / "manifest.tsv"),
                 "license": "CC0", "min_train_masks": 5},
        "input": {"channels": CHANNELS, "channel0": "mean of R,G,B (alpha dropped)",
                  "channel1": "zeros", "normalize": "Cellpose default (1st-99th percentile)"},
        "init": ({"model": a.init.name, "sha256": sha256_file(a.init)} if a.init else None),
        "seed": a.seed, "nbase": nbase, "diam_mean": DIAM_MEAN,
        "diam_labels": float(net.diam_labels.item()), "epochs": a.epochs,
        "nimg_per_epoch": nimg, "batch_size": a.batch_size, "bsize": 224,
        "optimizer": "AdamW (train_seg default)", "lr": a.lr, "weight_decay": a.weight_decay,
        "rescale": True, "scale_range": 0.5,
        "threads": a.threads, "train_seconds": round(secs, 1),
        "seconds_per_epoch": round(secs / a.epochs, 1),
        "seconds_per_image_step": round(secs / (a.epochs * nimg), 3),
        "train_loss_per_epoch": [round(float(x), 4) for x in tr_loss],
        "final_train_loss": round(float(tr_loss[-1]), 4),
        "validation": ev,
        "versions": {"cellpose": version("cellpose"), "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "command": " ".join(["tools/train/train_nuclei.py"] + sys.argv[1:]),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    js = a.out.with_name(a.out.name + ".json")
    js.write_text(json.dumps(rec, indent=1) + "\n")
    log.info("wrote %s and %s", a.out, js)


if __name__ == "__main__":
    main()
