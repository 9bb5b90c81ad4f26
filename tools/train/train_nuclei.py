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
  .venv/bin/python tools/train/train_nuclei.py eval  --model models/nuclei_gpuseg_v2
On a CUDA machine without the PNG folders (see tools/train/pack_dsb.py, tools/train/train_gpu.sh):
  python3 tools/train/train_nuclei.py train --device cuda --pack .device/data/dsb2018.npz \
      --nbase 2,32,64,128,256 --time-budget 240 --epochs 500 --out $OUT/full.pt
--time-budget picks the epoch count (clamped to [20, --epochs]) from a short speed probe so that
training after the flows ends within the budget; train_seg's checkpoint (every 10 epochs, saved
atomically, CPU tensors) stays usable if the run is killed: its path is logged at start.
"""
import os

# One core for us, one left for others: set before numpy/torch/numba load their pools.
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import copy
import hashlib
import json
import logging
import platform
import random
import sys
import tempfile
import time
import types
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


_PACKS = {}


def open_pack(pack):
    """The arrays of a tools/train/pack_dsb.py file (read once; no pickled objects allowed)."""
    key = str(pack)
    if key not in _PACKS:
        with np.load(key, allow_pickle=False) as z:
            _PACKS[key] = {k: z[k] for k in z.files}
    return _PACKS[key]


def decode_rgb(buf):
    """Lossless WebP bytes of pack_dsb.py -> HxWx3 uint8 R,G,B (a grey one repeated 3 times)."""
    a = cv2.imdecode(np.asarray(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise SystemExit("train_nuclei: this OpenCV cannot decode the packed (WebP) images")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3][:, :, ::-1])


def two_channel_from_u8(u8):
    """The training input from uint8 R,G,B: grey = float32(R+G+B)/3, bit-identical to the
    float32 mean(axis=2) of to_two_channel (pack_dsb.py asserts it for every image)."""
    s = u8.astype(np.uint16).sum(axis=2, dtype=np.uint16)
    grey = s.astype(np.float32) / np.float32(3)
    return np.stack([grey, np.zeros_like(grey)])


def pack_labels(pack, split, n):
    """The first n label images of a packed split (flat concatenation + shapes)."""
    z = open_pack(pack)
    flat, out, off = z[f"{split}_lbl"], [], 0
    for h, w in z[f"{split}_shapes"][:n]:
        out.append(flat[off:off + int(h) * int(w)].reshape(int(h), int(w)).astype(np.int32))
        off += int(h) * int(w)
    return out


def pack_dev_rgb(pack):
    """The dev images as load_rgb gives them (HxWx3 float32 R,G,B)."""
    z = open_pack(pack)
    return [decode_rgb(z[f"dev_img_{k}"]).astype(np.float32) for k in range(len(z["dev_ids"]))]


def split_info(split, pack=None):
    """(manifest sha256, per-image n_objects) of a split, from the pack or the data folder."""
    if pack:
        z = open_pack(pack)
        return str(z[f"{split}_manifest_sha256"]), [int(x) for x in z[f"{split}_n_objects"]]
    man = DATA / split / "manifest.tsv"
    counts = [int(ln.split("\t")[3]) for ln in man.read_text().splitlines()[1:] if ln.strip()]
    return sha256_file(man), counts


def load_split(split, limit=None, pack=None):
    if pack:
        z = open_pack(pack)
        ids = [str(x) for x in z[f"{split}_ids"]]
        if limit:
            ids = ids[:limit]
        imgs = [two_channel_from_u8(decode_rgb(z[f"{split}_img_{k}"])) for k in range(len(ids))]
        return ids, imgs, pack_labels(pack, split, len(ids))
    ids = read_manifest(split)
    if limit:
        ids = ids[:limit]
    imgs = [to_two_channel(load_rgb(DATA / split / "images" / f"{i}.png")) for i in ids]
    lbls = [load_labels(DATA / split / "labels" / f"{i}.png") for i in ids]
    return ids, imgs, lbls


def flows_cached(split, ids, lbls, device=None, pack=None):
    """Cellpose's labels->flows (4xHxW: labels, cell mask, flowY, flowX), cached per image
    under CACHE/<split>-<manifest sha>/ so reruns skip the slow part. On a GPU they are
    computed there (Cellpose's masks_to_flows_gpu), uncached: fast, and the machine is fresh."""
    if device is not None and device.type != "cpu":
        t0 = time.time()
        out = dynamics.labels_to_flows([lb.copy() for lb in lbls], device=device)
        log.info("flows for %d %s images on %s in %.1f s", len(out), split, device,
                 time.time() - t0)
        return out
    d = CACHE / f"{split}-{split_info(split, pack)[0][:16]}"
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


def cellpose_model(path, device=None):
    """A CellposeModel running this file: CellposeModel would build nbase [2,32,...], so the
    net is swapped for one with the file's widths (same diam_mean/diam_labels handling)."""
    nb = nbase_of_file(path)
    device = device or torch.device("cpu")
    if device.type == "cpu":
        m = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=DIAM_MEAN)
    else:
        m = models.CellposeModel(gpu=True, device=device, pretrained_model=False,
                                 diam_mean=DIAM_MEAN)
        assert m.gpu and m.device == device, (m.gpu, m.device)
    net = StylePadCPnet(list(nb), nout=3, sz=3, mkldnn=False, max_pool=True,
                        diam_mean=DIAM_MEAN)
    net.load_model(str(path), device=torch.device("cpu"))
    net.to(device)
    m.net = net
    m.nbase = nb
    m.pretrained_model = str(path)
    m.diam_mean = float(m.net.diam_mean.data.cpu().numpy()[0])
    m.diam_labels = float(m.net.diam_labels.data.cpu().numpy()[0])
    return m, nb


def evaluate(path, device=None, pack=None):
    """Pooled AP@0.5/0.75/0.9 over the dev images, Cellpose running the file with channels [0,0]
    on the RGB image; diameter None (uses the model's diam_labels) and the true per-image one."""
    m, nb = cellpose_model(path, device)
    if pack:
        ids = [str(x) for x in open_pack(pack)["dev_ids"]]
        rgbs = pack_dev_rgb(pack)
    else:
        ids = read_manifest("dev")
        rgbs = [load_rgb(DATA / "dev" / "images" / f"{i}.png") for i in ids]
    # check that Cellpose's channels=[0,0] conversion is the one trained on
    from cellpose import transforms
    conv = transforms.convert_image(rgbs[0], channels=CHANNELS, channel_axis=2)
    assert np.allclose(conv.transpose(2, 0, 1), to_two_channel(rgbs[0]), atol=1e-3)
    if pack:
        gts = load_split("dev", pack=pack)[2]
    else:
        gts = [load_labels(DATA / "dev" / "labels" / f"{i}.png") for i in ids]
    true_d = [float(utils.diameters(g)[0]) for g in gts]
    thr = [0.5, 0.75, 0.9]
    res = {"device": str(m.device), "nbase": nb, "diam_mean": m.diam_mean,
           "diam_labels": m.diam_labels,
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


def save_cpu_atomic(net, filename):
    """Cellpose's save_model (torch.save of the state dict, the same OrderedDict) but with CPU
    tensors, written to a temporary file and renamed: a file from a GPU run loads like a CPU
    one, and a run killed mid-save never leaves a torn checkpoint."""
    sd = net.state_dict()
    for k in sd:
        sd[k] = sd[k].detach().cpu()
    tmp = f"{filename}.tmp"
    torch.save(sd, tmp)
    os.replace(tmp, str(filename))


def train_seg(a, net, imgs, flows, epochs, save_dir, name, nimg_per_epoch):
    """Cellpose's train_seg with this recipe (its defaults: AdamW, LR warm-up and final halving,
    bsize 224, rescale, min_train_masks 5); checkpoints every 10 epochs into save_dir/models."""
    net.save_model = types.MethodType(save_cpu_atomic, net)
    return train.train_seg(
        net, train_data=imgs, train_labels=flows, channels=None, normalize=True,
        batch_size=a.batch_size, learning_rate=a.lr, weight_decay=a.weight_decay,
        SGD=False, n_epochs=epochs, nimg_per_epoch=nimg_per_epoch, rescale=True,
        bsize=224, min_train_masks=5, save_path=str(save_dir), save_every=10,
        model_name=name)


def probe_speed(a, net, imgs, flows, td, steps_per_epoch):
    """Time a 1-epoch train_seg of a.probe_images images on a deep copy of the net (the real net
    is untouched). Step time = mean interval between the forward calls of the second half of
    the steps (the first CUDA steps are slow); setup = train_seg's own preparation before its
    first step (normalisation, diameters), which the real run pays again."""
    pnet = copy.deepcopy(net)
    stamps = []

    def pre_forward(_mod, _inp):
        if pnet.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    (td / "probe").mkdir(parents=True, exist_ok=True)
    hook = pnet.register_forward_pre_hook(pre_forward)
    t0 = time.perf_counter()
    # copies: train_seg normalises float32 images in place (transforms.normalize_img), and
    # the real run must see the raw images as without a probe
    train_seg(a, pnet, [im.copy() for im in imgs], flows, 1, td / "probe", "probe",
              a.probe_images)
    total = time.perf_counter() - t0
    hook.remove()
    del pnet
    gaps = np.diff(stamps)
    if len(gaps) < 2:
        raise SystemExit(f"train_nuclei: speed probe made only {len(stamps)} steps")
    half = gaps[len(gaps) // 2:]
    step = float(half.mean())
    return {"images": a.probe_images, "steps": len(stamps), "seconds": round(total, 2),
            "setup_seconds": round(stamps[0] - t0, 2),
            "first_step_seconds": round(float(gaps[0]), 3),
            "seconds_per_step": round(step, 4), "steps_per_epoch": steps_per_epoch,
            "seconds_per_epoch": round(step * steps_per_epoch, 3)}


def run_train(a, nbase, epochs, n_img=None, out=None):
    seed_all(a.seed)
    dev = torch.device(a.device)
    ids, imgs, lbls = load_split("train", n_img, pack=a.pack)
    flows = flows_cached("train", ids, lbls, device=dev, pack=a.pack)
    t_flows = time.time()
    net = build_net(nbase)
    if a.init:
        # continue from an earlier run's weights (same widths); train_seg's warm-up and final
        # lr halving run again, so this is "more epochs", not a different optimiser schedule
        net.load_model(str(a.init), device=torch.device("cpu"))
        if nbase_of_file(a.init) != list(nbase):
            raise SystemExit(f"train_nuclei: {a.init}: widths {nbase_of_file(a.init)} != --nbase")
    net.to(dev)  # train_seg puts batches, loss and diam_labels on net.device
    # train_seg saves into <save_path>/models/<name>: keep that (and its every-10-epochs
    # checkpoint, useful if a run is cut short) under the /tmp cache, out of the repository.
    td = CACHE / "runs" / (out.name if out else "timing")
    td.mkdir(parents=True, exist_ok=True)
    log.info("checkpoint (every 10 epochs, CPU tensors, Cellpose format): %s",
             td / "models" / "net")
    counts = split_info("train", a.pack)[1][:len(ids)]
    nimg = a.nimg_per_epoch or sum(c >= 5 for c in counts)  # train_seg drops < 5 masks
    budget = None
    if a.time_budget:
        steps = -(-nimg // a.batch_size)
        first = imgs[0].copy()
        pr = probe_speed(a, net, imgs, flows, td, steps)
        assert np.array_equal(first, imgs[0]), "the speed probe changed the training images"
        used = time.time() - t_flows
        remaining = a.time_budget - used - pr["setup_seconds"]
        if a.deadline:  # a wall-clock end (a lent machine's call limit) caps the budget
            remaining = min(remaining, a.deadline - time.time() - pr["setup_seconds"])
        want = int(np.floor(remaining * 0.92 / pr["seconds_per_epoch"]))
        epochs = max(20, min(want, epochs))
        budget = {"seconds": a.time_budget, "probe": pr,
                  "seconds_used_before_training": round(used, 2),
                  "remaining_for_training": round(remaining, 2), "epochs_fit": want,
                  "epochs_max": a.epochs, "epochs": epochs}
        log.info("time budget %s s: probe %s; %.1f s left -> %d epochs (fit %d, max %d)",
                 a.time_budget, pr, remaining, epochs, want, a.epochs)
    t0 = time.time()
    _, tr_loss, _ = train_seg(a, net, imgs, flows, epochs, td, "net", a.nimg_per_epoch)
    secs = time.time() - t0
    if budget:
        budget["train_seconds"] = round(secs, 1)
        budget["ended_seconds_after_flows"] = round(time.time() - t_flows, 1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_cpu_atomic(net, out)  # torch.save(state_dict), Cellpose's own format
    return net, ids, tr_loss, secs, epochs, budget


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
    p.add_argument("--out", type=Path, default=REPO / "models" / "nuclei_gpuseg_v2")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--init", type=Path, default=None,
                   help="start from this model file's weights (continue an earlier run)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--pack", type=Path, default=None,
                   help="read train/dev from this tools/train/pack_dsb.py file, not the PNGs")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for training after the flows, speed probe included: picks "
                        "the epochs, clamped to [20, --epochs]")
    p.add_argument("--deadline", type=float, default=None,
                   help="with --time-budget: training also ends by this time (epoch seconds)")
    p.add_argument("--probe-images", type=int, default=96,
                   help="images in the 1-epoch speed probe of --time-budget")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_nuclei: --device cuda but torch sees no CUDA device")
    if a.cmd != "train" and a.time_budget:
        raise SystemExit("train_nuclei: --time-budget is for the train command")
    torch.set_num_threads(a.threads)
    nbase = [int(x) for x in a.nbase.split(",")]

    if a.cmd == "eval":
        print(json.dumps(evaluate(a.model or a.out, torch.device(a.device), a.pack), indent=1))
        return
    if a.cmd == "time":
        _, ids, tr_loss, secs, _, _ = run_train(a, nbase, a.epochs, n_img=a.n_img)
        print(json.dumps({"nbase": nbase, "n_img": len(ids), "epochs": a.epochs,
                          "seconds": round(secs, 1),
                          "seconds_per_image_step": round(secs / (a.epochs * len(ids)), 4),
                          "train_loss": [round(float(x), 4) for x in tr_loss]}))
        return

    t_start = time.time()
    net, ids, tr_loss, secs, epochs, budget = run_train(a, nbase, a.epochs, n_img=a.n_img,
                                                        out=a.out)
    nimg = a.nimg_per_epoch or len(ids)
    try:
        ev = evaluate(a.out, torch.device(a.device), a.pack)
    except Exception:  # the weights are saved already: keep the run, evaluate on the CPU
        if a.device == "cpu":
            raise
        log.exception("dev evaluation on %s failed; evaluating on the CPU", a.device)
        ev = evaluate(a.out, torch.device("cpu"), a.pack)
    from importlib.metadata import version
    man_sha, counts = split_info("train", a.pack)
    counts = counts[:len(ids)]  # the --n-img subset, in manifest order
    n_masks = sum(counts)
    n_used = sum(c >= 5 for c in counts)  # train_seg drops images with < min_train_masks
    rec = {
        "model": a.out.name, "format": "Cellpose 3 CPnet state dict (torch.save)",
        "model_sha256": sha256_file(a.out), "model_bytes": a.out.stat().st_size,
        "data": {"train": "dsb2018/train", "n_images": len(ids), "n_masks": n_masks,
                 "n_images_used": n_used,
                 "manifest_sha256": man_sha,
                 "dev_manifest_sha256": split_info("dev", a.pack)[0],
                 "pack": ({"file": a.pack.name, "sha256": sha256_file(a.pack)}
                          if a.pack else None),
                 "license": "CC0", "min_train_masks": 5},
        "input": {"channels": CHANNELS, "channel0": "mean of R,G,B (alpha dropped)",
                  "channel1": "zeros", "normalize": "Cellpose default (1st-99th percentile)"},
        "init": ({"model": a.init.name, "sha256": sha256_file(a.init)} if a.init else None),
        "seed": a.seed, "nbase": nbase, "diam_mean": DIAM_MEAN,
        "diam_labels": float(net.diam_labels.item()), "epochs": epochs,
        "device": (torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"),
        "time_budget": budget,
        "nimg_per_epoch": nimg, "batch_size": a.batch_size, "bsize": 224,
        "optimizer": "AdamW (train_seg default)", "lr": a.lr, "weight_decay": a.weight_decay,
        "rescale": True, "scale_range": 0.5,
        "threads": a.threads, "train_seconds": round(secs, 1),
        "seconds_per_epoch": round(secs / epochs, 2),
        "seconds_per_image_step": round(secs / (epochs * nimg), 4),
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
