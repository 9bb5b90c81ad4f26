#!/usr/bin/env python3
"""A training loop for gpuseg's nuclei CPnet that keeps a GPU busy (issue #19).

Cellpose 3.1.1.3's recipe (train.train_seg), with the per-batch work moved onto the device:
  - flows computed once (Cellpose's dynamics.labels_to_flows; cached under /tmp on the CPU,
    computed on the GPU there), images normalised once by Cellpose's transforms.normalize_img,
    exactly as train_seg does before its first epoch;
  - the whole training set resident on the device as one flat tensor per channel kind
    (5 channels: the two input channels, the cell mask, flow Y, flow X);
  - Cellpose's augmentation (transforms.random_rotate_and_resize: random scale around the
    image's diameter / diam_mean with a 0.5 range, rotation, horizontal flip, a 224^2 crop,
    flows rotated with the image, X flow negated by the flip, the mask by nearest neighbour,
    the rest bilinear on OpenCV's 1/32-pixel grid with zeros outside) done for the whole batch
    on the device by gathers; its random numbers are drawn exactly as train_seg draws them
    (numpy, reseeded with the epoch number), so with the same seed both loops see the same
    images, crops, angles and scales in the same order;
  - Cellpose's loss (MSE of the flows against 5x the true flows, halved, + BCE on the cell
    probability), optimiser (AdamW, lr 0.005, weight decay 1e-5, or SGD with momentum 0.9),
    batch 8 and learning-rate schedule (10-epoch linear warm-up from 0; the last 50 epochs
    halve every 5 when n_epochs > 100, the last 100 every 10 when n_epochs > 300);
  - optional mixed precision (--amp bf16|fp16|auto on CUDA; off on the CPU);
  - the net is cellpose.resnet_torch.CPnet, saved as its state dict (CPU tensors), i.e. an
    ordinary Cellpose 3 model file that Cellpose and gpuseg load.
Model selection: a stratified validation split of dsb2018/train (tools/train/val_split.tsv,
made by `split`) is held out of training; saved checkpoints are scored on it by Cellpose's
eval at the model diameter (AP@0.5/0.75/0.9 pooled); dsb2018/dev is reported separately.
Resume: OUT/model (weights) + OUT/model.opt (optimizer state, epoch, RNG, recipe) continue a
run exactly (--resume OUT), with the same schedule or a longer one (--epochs).

Usage (repository root, Cellpose 3.1 in .venv):
  .venv/bin/python tools/train/train_fast.py split        # writes tools/train/val_split.tsv
  .venv/bin/python tools/train/train_fast.py train --nbase 2,8,16,32,64 --n-img 32 \\
      --epochs 4 --out /tmp/fast_small
  .venv/bin/python tools/train/train_fast.py train --resume /tmp/fast_small --epochs 8
  .venv/bin/python tools/train/train_fast.py check        # augmentation vs Cellpose's
  .venv/bin/python tools/train/train_fast.py eval --model FILE   # Cellpose: val and dev
On a lent GPU: bash tools/device/session.sh train-fast SECONDS (docs/training.md).
"""
import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import copy
import hashlib
import json
import logging
import math
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_nuclei as tn  # noqa: E402  (data loading, flows cache, Cellpose eval shim)
from cellpose import metrics, models, transforms, utils  # noqa: E402

VAL_SPLIT = Path(__file__).resolve().parent / "val_split.tsv"
BSIZE = 224
THR = [0.5, 0.75, 0.9]
log = logging.getLogger("train_fast")


# ----------------------------------------------------------------------------- the split

def image_category(u8):
    """dsb2018/dev's image types, from the 8-bit RGB pixels: 'he_color' when the channels
    differ, else 'bright_gray' when the median grey is above 128 (bright-field: dark nuclei on
    a bright background), else 'fluo_gray'. Reproduces dev/manifest.tsv's category column on
    all 8 dev images; on train the grey medians fall in two groups (<= 44 and >= 226)."""
    if not (np.array_equal(u8[:, :, 0], u8[:, :, 1]) and np.array_equal(u8[:, :, 0], u8[:, :, 2])):
        return "he_color"
    return "bright_gray" if np.median(u8[:, :, 0]) > 128 else "fluo_gray"


def make_split(quota, out):
    """Stratified validation split of dsb2018/train: per category the quota, spread over the
    image sizes (a proxy for the DSB experiment a picture comes from) by largest remainders,
    the images within a (category, size) stratum taken in sha256(id) order. Deterministic."""
    ids = tn.read_manifest("train")
    man = (tn.DATA / "train" / "manifest.tsv").read_text().splitlines()
    head = man[0].split("\t")
    rows = {ln.split("\t")[0]: ln.split("\t") for ln in man[1:] if ln.strip()}
    cat, size, nobj = {}, {}, {}
    for i in ids:
        u8 = tn.load_rgb(tn.DATA / "train" / "images" / f"{i}.png").astype(np.uint8)
        cat[i] = image_category(u8)
        size[i] = f"{rows[i][head.index('width')]}x{rows[i][head.index('height')]}"
        nobj[i] = int(rows[i][head.index("n_objects")])
    # the rule must reproduce dev's own labels
    dlines = (tn.DATA / "dev" / "manifest.tsv").read_text().splitlines()
    dh = dlines[0].split("\t")
    for ln in dlines[1:]:
        f = ln.split("\t")
        u8 = tn.load_rgb(tn.DATA / "dev" / "images" / f"{f[0]}.png").astype(np.uint8)
        got = image_category(u8)
        if got != f[dh.index("category")]:
            raise SystemExit(f"train_fast: dev {f[0]}: rule says {got}, manifest says "
                             f"{f[dh.index('category')]}")
    chosen = []
    for c, q in quota.items():
        members = [i for i in ids if cat[i] == c]
        if q > len(members):
            raise SystemExit(f"train_fast: category {c} has {len(members)} images < {q}")
        strata = {}
        for i in members:
            strata.setdefault(size[i], []).append(i)
        exact = {s: q * len(v) / len(members) for s, v in strata.items()}
        take = {s: int(math.floor(e)) for s, e in exact.items()}
        rest = q - sum(take.values())
        for s in sorted(exact, key=lambda s: (-(exact[s] - take[s]), s))[:rest]:
            take[s] += 1
        for s, v in sorted(strata.items()):
            v = sorted(v, key=lambda i: hashlib.sha256(f"val:{i}".encode()).hexdigest())
            chosen += v[:take[s]]
    order = {i: k for k, i in enumerate(ids)}
    chosen.sort(key=order.get)
    lines = ["image_id\tcategory\tsize\tn_objects"]
    lines += [f"{i}\t{cat[i]}\t{size[i]}\t{nobj[i]}" for i in chosen]
    out.write_text("\n".join(lines) + "\n")
    counts = {c: sum(cat[i] == c for i in ids) for c in quota}
    log.info("split: %d validation images %s of train's %s -> %s", len(chosen),
             {c: sum(cat[i] == c for i in chosen) for c in quota}, counts, out)


def read_split(path):
    """{image id: category} of a validation split file, in file order."""
    lines = Path(path).read_text().splitlines()
    head = lines[0].split("\t")
    if head[:2] != ["image_id", "category"]:
        raise SystemExit(f"train_fast: {path}: not a split file (header {head[:2]})")
    out = {}
    for ln in lines[1:]:
        if ln.strip():
            f = ln.split("\t")
            out[f[0]] = f[1]
    return out


# ----------------------------------------------------------------------------- the data

def load_train_val(a):
    """(train ids, 2xHxW raw images, labels), (val ids, RGB images, labels, categories)."""
    if a.pack:
        ids = [str(x) for x in tn.open_pack(a.pack)["train_ids"]]
    else:
        ids = tn.read_manifest("train")
    val = read_split(a.val_split) if a.val_split else {}
    missing = set(val) - set(ids)
    if missing:
        raise SystemExit(f"train_fast: {a.val_split}: {len(missing)} ids not in dsb2018/train")
    tr = [k for k, i in enumerate(ids) if i not in val]
    if a.n_img:
        tr = tr[:a.n_img]
    va = [k for k, i in enumerate(ids) if i in val]
    if a.val_limit is not None:
        va = va[:a.val_limit]
    imgs, lbls = load_some("train", ids, set(tr) | set(va), a.pack)
    # Cellpose runs the model on the RGB image with channels [0,0] (the mean of R,G,B)
    val_rgb = [rgb_image("train", k, ids[k], a.pack) for k in va]
    train = ([ids[k] for k in tr], [imgs[k] for k in tr], [lbls[k] for k in tr])
    valid = ([ids[k] for k in va], val_rgb, [lbls[k] for k in va], [val[ids[k]] for k in va])
    return train, valid


def load_some(split, ids, want, pack):
    """The 2xHxW training inputs and int32 labels of the images numbered in `want` (others
    None), from the pack or the PNGs, exactly as train_nuclei.load_split reads them."""
    imgs, lbls = [None] * len(ids), [None] * len(ids)
    if pack:
        z = tn.open_pack(pack)
        flat, off = z[f"{split}_lbl"], 0
        for k, (h, w) in enumerate(z[f"{split}_shapes"]):
            n = int(h) * int(w)
            if k in want:
                imgs[k] = tn.two_channel_from_u8(tn.decode_rgb(z[f"{split}_img_{k}"]))
                lbls[k] = flat[off:off + n].reshape(int(h), int(w)).astype(np.int32)
            off += n
        return imgs, lbls
    for k in sorted(want):
        imgs[k] = tn.to_two_channel(tn.load_rgb(tn.DATA / split / "images" / f"{ids[k]}.png"))
        lbls[k] = tn.load_labels(tn.DATA / split / "labels" / f"{ids[k]}.png")
    return imgs, lbls


def rgb_image(split, k, image_id, pack):
    """The k-th image of a split as HxWx3 float32 R,G,B (what tools/eval_dev.py gives eval)."""
    if pack:
        return tn.decode_rgb(tn.open_pack(pack)[f"{split}_img_{k}"]).astype(np.float32)
    return tn.load_rgb(tn.DATA / split / "images" / f"{image_id}.png")


def prepare(imgs, flows, min_train_masks=5):
    """train_seg's preparation: diameters of the flow labels (< 5 -> 5), images with fewer
    than min_train_masks masks dropped, each image normalised per channel (1st-99th
    percentile) by Cellpose's own normalize_img with train_seg's parameters."""
    diam, keep = [], []
    for k, fl in enumerate(flows):
        d, dall = utils.diameters(fl[0])
        if len(dall) >= min_train_masks:
            keep.append(k)
            diam.append(max(float(d), 5.0))
    params = dict(models.normalize_default)
    params["normalize"] = True
    normed = [transforms.normalize_img(imgs[k].copy(), normalize=params, axis=0) for k in keep]
    return keep, np.array(diam, np.float64), normed


class DeviceSet:
    """The training set on the device: the 2 input channels, flow Y and flow X (bilinear) in
    one (4, P) tensor and the cell mask (nearest) in a (P,) tensor, P = all pixels of all
    images back to back; per image its offset, height and width."""

    def __init__(self, normed, flows, device):
        shapes = [im.shape[-2:] for im in normed]
        sizes = [h * w for h, w in shapes]
        self.off = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.int64,
                                device=device)
        self.h = torch.tensor([s[0] for s in shapes], dtype=torch.int64, device=device)
        self.w = torch.tensor([s[1] for s in shapes], dtype=torch.int64, device=device)
        self.hw = np.array(shapes, np.float64)
        self.nchan = normed[0].shape[0]
        lin = np.concatenate([np.concatenate([im.reshape(self.nchan, -1), fl[2:].reshape(2, -1)])
                              for im, fl in zip(normed, flows)], axis=1)
        self.lin = torch.from_numpy(np.ascontiguousarray(lin, np.float32)).to(device)
        mask = np.concatenate([fl[1].reshape(-1) for fl in flows])
        self.mask = torch.from_numpy(np.ascontiguousarray(mask, np.float32)).to(device)
        self.device = device
        self.n = len(normed)


def draw_params(rs, inds, diam, diam_mean, hw, scale_range=0.5, bsize=BSIZE):
    """The random numbers of transforms.random_rotate_and_resize, drawn in its order (per image:
    flip, theta, scale, dxy[2]) from the numpy RandomState rs; rescale = diam / diam_mean as
    train_seg passes it. Returns float64 arrays flip, theta, scale, cx1, cy1 (cc1 of Cellpose,
    the output point the image centre goes to)."""
    n = len(inds)
    flip, theta, scale, cx1, cy1 = (np.zeros(n, bool), np.zeros(n), np.zeros(n), np.zeros(n),
                                    np.zeros(n))
    for j, i in enumerate(inds):
        ly, lx = hw[i]
        flip[j] = rs.rand() > .5
        theta[j] = rs.rand() * np.pi * 2
        s = np.float32((1 - scale_range / 2) + scale_range * rs.rand())  # float32, as Cellpose
        s = np.float32(s * np.float32(1. / (diam[i] / diam_mean)))
        scale[j] = s
        dxy = np.maximum(0, np.array([lx * s - bsize, ly * s - bsize]))
        dxy = (rs.rand(2) - .5) * dxy
        cx1[j] = lx / 2 - (lx - bsize) / 2 + dxy[0]
        cy1[j] = ly / 2 - (ly - bsize) / 2 + dxy[1]
    return flip, theta, scale, cx1, cy1


def augment(ds, inds, params, bsize=BSIZE):
    """random_rotate_and_resize for a batch, on the device. Output pixel p (integer x, y)
    samples the (flipped) source at cc + R(-theta) (p - cc1) / scale, the inverse of OpenCV's
    getAffineTransform/warpAffine map; bilinear on a 1/32-pixel grid (OpenCV's INTER_BITS)
    with zeros outside; the mask by rounding (INTER_NEAREST). Returns X (B, nchan, bs, bs) and
    lbl (B, 3, bs, bs) = cell mask, flow Y, flow X (flows rotated by theta, X negated by the
    flip) in float32."""
    dev = ds.device
    flip, theta, scale, cx1, cy1 = params
    idx = torch.as_tensor(np.asarray(inds), dtype=torch.int64, device=dev)
    h, w, off = ds.h[idx], ds.w[idx], ds.off[idx]
    hf, wf = h.double(), w.double()

    def t(x):
        return torch.as_tensor(np.asarray(x, np.float64), device=dev)

    th, sc, c1x, c1y = t(theta), t(scale), t(cx1), t(cy1)
    fl = torch.as_tensor(flip, device=dev)
    cos, sin = torch.cos(th), torch.sin(th)
    r = torch.arange(bsize, device=dev, dtype=torch.float64)
    px = r.view(1, 1, -1) - c1x.view(-1, 1, 1)
    py = r.view(1, -1, 1) - c1y.view(-1, 1, 1)
    cos, sin, sc = cos.view(-1, 1, 1), sin.view(-1, 1, 1), sc.view(-1, 1, 1)
    qx = wf.view(-1, 1, 1) / 2 + (cos * px + sin * py) / sc
    qy = hf.view(-1, 1, 1) / 2 + (-sin * px + cos * py) / sc
    qx = torch.where(fl.view(-1, 1, 1), wf.view(-1, 1, 1) - 1 - qx, qx)
    B = len(inds)
    W, H, O = w.view(-1, 1, 1), h.view(-1, 1, 1), off.view(-1, 1, 1)

    def gather(src, xi, yi):
        ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        lin = O + yi.clamp(min=0) * W + xi.clamp(min=0)
        lin = torch.where(ok, lin, torch.zeros_like(lin)).reshape(-1)
        v = src[..., lin].reshape(*src.shape[:-1], B, bsize, bsize)
        return v * ok.to(v.dtype)

    # nearest (cell mask): OpenCV rounds the source coordinate
    mask = gather(ds.mask, torch.floor(qx + 0.5).long(), torch.floor(qy + 0.5).long())
    # bilinear on OpenCV's 1/32 grid
    qxq = torch.floor(qx * 32 + 0.5) / 32
    qyq = torch.floor(qy * 32 + 0.5) / 32
    x0, y0 = torch.floor(qxq), torch.floor(qyq)
    fx, fy = (qxq - x0).float(), (qyq - y0).float()
    x0, y0 = x0.long(), y0.long()
    v = (gather(ds.lin, x0, y0) * ((1 - fx) * (1 - fy)) + gather(ds.lin, x0 + 1, y0) * (fx * (1 - fy))
         + gather(ds.lin, x0, y0 + 1) * ((1 - fx) * fy) + gather(ds.lin, x0 + 1, y0 + 1) * (fx * fy))
    v = v.transpose(0, 1)  # (B, 4, bs, bs)
    X = v[:, :ds.nchan].contiguous()
    fyv, fxv = v[:, ds.nchan], v[:, ds.nchan + 1]
    fxv = torch.where(fl.view(-1, 1, 1), -fxv, fxv)
    c, s = cos.float(), sin.float()
    lbl = torch.stack([mask, fxv * s + fyv * c, fxv * c - fyv * s], dim=1)
    return X, lbl


def loss_fn(lbl, y):
    """train._loss_fn_seg: MSE(flows, 5 x true flows) / 2 + BCE(cellprob logit, mask > 0.5)."""
    y = y.float()
    loss = F.mse_loss(y[:, :2], 5. * lbl[:, 1:]) / 2.
    return loss + F.binary_cross_entropy_with_logits(y[:, -1], (lbl[:, 0] > 0.5).float())


def lr_schedule(lr, n_epochs):
    """train_seg's learning rate per epoch."""
    LR = np.linspace(0, lr, 10)
    LR = np.append(LR, lr * np.ones(max(0, n_epochs - 10)))
    if n_epochs > 300:
        LR = LR[:-100]
        for _ in range(10):
            LR = np.append(LR, LR[-1] / 2 * np.ones(10))
    elif n_epochs > 100:
        LR = LR[:-50]
        for _ in range(10):
            LR = np.append(LR, LR[-1] / 2 * np.ones(5))
    return LR


def epoch_order(epoch, nimg, nimg_per_epoch, probs, data_seed):
    """train_seg's sampling: np.random.seed(epoch) (+ data_seed), then a permutation of all
    images, or nimg_per_epoch draws with probabilities probs. Returns (RandomState, order): the
    same RandomState then draws the augmentation."""
    rs = np.random.RandomState(epoch + data_seed)
    if nimg != nimg_per_epoch:
        return rs, rs.choice(np.arange(nimg), size=(nimg_per_epoch,), p=probs)
    return rs, rs.permutation(np.arange(nimg))


# ----------------------------------------------------------------------------- checkpoints

def save_model(net, path):
    """The Cellpose model file: torch.save of the CPnet state dict with CPU tensors, written to
    a temporary name and renamed (never a torn file)."""
    sd = net.state_dict()
    for k in sd:
        sd[k] = sd[k].detach().cpu()
    tmp = f"{path}.tmp"
    torch.save(sd, tmp)
    os.replace(tmp, str(path))


def save_opt(opt, path, meta, dtype):
    """OUT/model.opt: optimizer state (moments in `dtype`: bfloat16 halves the file, for the
    device tool's 64 MiB), the epoch to start from, RNG states and the recipe."""
    sd = opt.state_dict()
    for st in sd["state"].values():
        for k, v in st.items():
            if torch.is_tensor(v):
                v = v.detach().cpu()
                st[k] = v.to(dtype) if v.is_floating_point() and v.dim() > 0 else v
    blob = {"optimizer": sd, "torch_rng": torch.get_rng_state(),
            "meta_json": json.dumps(meta)}
    if torch.cuda.is_available():
        blob["cuda_rng"] = torch.cuda.get_rng_state()
    tmp = f"{path}.tmp"
    torch.save(blob, tmp)
    os.replace(tmp, str(path))


def load_opt(path):
    blob = torch.load(str(path), map_location="cpu", weights_only=True)
    return blob, json.loads(blob["meta_json"])


def sha256_file(path):
    return tn.sha256_file(path)


# ----------------------------------------------------------------------------- evaluation

def evaluate(path, rgbs, gts, device, modes=("model",), cats=None):
    """Cellpose's eval of the model file on the images (channels [0,0], flow threshold 0.4,
    cellprob threshold 0), AP@0.5/0.75/0.9 pooled (TP, FP, FN summed over images), per mode:
    'model' = the file's diam_labels (Cellpose's diameter=None), 'true' = each image's median
    ground-truth diameter. With cats, also pooled per category."""
    m, _ = tn.cellpose_model(path, device)
    res = {}
    for mode in modes:
        t0 = time.time()
        preds = []
        for img, gt in zip(rgbs, gts):
            d = None if mode == "model" else float(utils.diameters(gt)[0])
            preds.append(m.eval(img, channels=tn.CHANNELS, channel_axis=2, diameter=d)[0])
        _, tp, fp, fn = metrics.average_precision(gts, preds, threshold=THR)

        def pool(sel):
            s = [tp[sel].sum(0), fp[sel].sum(0), fn[sel].sum(0)]
            return [round(float(x), 4) for x in s[0] / np.maximum(s[0] + s[1] + s[2], 1)]

        r = {"ap": pool(np.arange(len(gts))), "n_images": len(gts),
             "seconds": round(time.time() - t0, 1)}
        if cats:
            r["ap_by_category"] = {c: pool(np.array([k for k, x in enumerate(cats) if x == c]))
                                   for c in sorted(set(cats))}
        res[mode] = r
    return res


# ----------------------------------------------------------------------------- training

def build_net(nbase, device, seed):
    torch.manual_seed(seed)
    net = tn.build_net(nbase)
    return net.to(device)


def make_optimizer(net, a):
    if a.sgd:
        return torch.optim.SGD(net.parameters(), lr=a.lr, weight_decay=a.weight_decay,
                               momentum=0.9)
    return torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.weight_decay)


class Trainer:
    def __init__(self, a, ds, diam, net, opt, device, amp):
        self.a, self.ds, self.diam, self.net, self.opt, self.device = a, ds, diam, net, opt, device
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.diam_mean = float(net.diam_mean.item())

    def forward(self, X):
        if self.amp in ("bf16", "fp16"):
            dt = torch.bfloat16 if self.amp == "bf16" else torch.float16
            with torch.autocast(device_type=self.device.type, dtype=dt):
                return self.net(X)[0]
        return self.net(X)[0]

    def test_loss(self, vs, vdiam):
        """train_seg's test loss: numpy reseeded with 42, a permutation of the held-out images,
        the same augmentation, the net in eval mode without gradients; the mean loss."""
        rs = np.random.RandomState(42)
        order = rs.permutation(np.arange(vs.n))
        total = torch.zeros((), device=self.device)
        self.net.eval()
        with torch.no_grad():
            for k in range(0, vs.n, self.a.batch_size):
                inds = order[k:k + self.a.batch_size]
                params = draw_params(rs, inds, vdiam, self.diam_mean, vs.hw,
                                     scale_range=self.a.scale_range)
                X, lbl = augment(vs, inds, params)
                total += loss_fn(lbl, self.forward(X)) * len(inds)
        return float(total.item()) / vs.n

    def step(self, inds, rs, lr=None):
        """One batch: augmentation draws from rs, on-device augmentation, forward, loss,
        backward, optimizer step. Returns the loss tensor (not synchronised)."""
        params = draw_params(rs, inds, self.diam, self.diam_mean, self.ds.hw,
                             scale_range=self.a.scale_range)
        X, lbl = augment(self.ds, inds, params)
        if lr is not None:
            for g in self.opt.param_groups:
                g["lr"] = lr
        self.net.train()
        loss = loss_fn(lbl, self.forward(X))
        self.opt.zero_grad()
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return loss.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def probe(a, ds, diam, net, device, amp, steps, nbase=None):
    """Seconds per batch of a.batch_size for `steps` steps on a copy of the net (the real net
    and optimizer are untouched); the first 3 steps (cuDNN's autotuning) are not counted."""
    pnet = copy.deepcopy(net) if nbase is None else build_net(nbase, device, 12345)
    pnet.diam_labels.data = net.diam_labels.data.clone()
    tr = Trainer(a, ds, diam, pnet, make_optimizer(pnet, a), device, amp)
    rs = np.random.RandomState(99991)
    warm = 3 if device.type == "cuda" else 1
    for k in range(steps + warm):
        if k == warm:
            sync(device)
            t0 = time.perf_counter()
        inds = rs.randint(0, ds.n, size=a.batch_size)
        tr.step(inds, rs, lr=a.lr)
    sync(device)
    sec = (time.perf_counter() - t0) / steps
    del tr, pnet
    return sec


def run_train(a):
    t_start = time.time()
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    resume_blob, resume_meta = None, None
    if a.resume:
        resume_blob, resume_meta = load_opt(Path(a.resume) / "model.opt")
        r = resume_meta["recipe"]
        # the run's own recipe wins over the command line (only --epochs may change it)
        for k in ("nbase", "lr", "weight_decay", "sgd", "batch_size", "seed", "scale_range",
                  "nimg_per_epoch", "n_img", "data_seed", "min_train_masks"):
            setattr(a, k, r[k])
        if a.epochs is None:
            a.epochs = r["epochs"]
        got = sha256_file(Path(a.resume) / "model")
        if got != resume_meta["model_sha256"]:
            raise SystemExit(f"train_fast: {a.resume}/model does not belong to model.opt "
                             "(sha256 differs)")
    if a.epochs is None:
        a.epochs = 500
    nbase = [int(x) for x in str(a.nbase).strip("[]").replace(" ", "").split(",")]
    if a.val_split and resume_meta and resume_meta["recipe"]["val_split_sha256"] != \
            sha256_file(a.val_split):
        raise SystemExit(f"train_fast: {a.val_split} differs from the split of {a.resume}")
    # data: flows once, then everything on the device
    (ids, imgs, lbls), (vids, vrgb, vlbl, vcat) = load_train_val(a)
    flows = tn.flows_cached("train", ids, lbls, device=device, pack=a.pack)
    keep, diam, normed = prepare(imgs, flows, a.min_train_masks)
    flows = [flows[k] for k in keep]
    ds = DeviceSet(normed, flows, device)
    del imgs, normed
    vs, vdiam = None, None
    if vids and a.test_loss_every:
        # the held-out images for train_seg's test loss: flows, diameters (< 5 -> 5, none
        # dropped) and normalisation as for training
        vflows = tn.flows_cached("train", vids, vlbl, device=device, pack=a.pack)
        vdiam = np.array([max(float(utils.diameters(f[0])[0]), 5.0) for f in vflows])
        params = dict(models.normalize_default)
        params["normalize"] = True
        vnorm = [transforms.normalize_img(tn.to_two_channel(x), normalize=params, axis=0)
                 for x in vrgb]
        vs = DeviceSet(vnorm, vflows, device)
        del vflows, vnorm
    nimg = ds.n
    nimg_per_epoch = a.nimg_per_epoch or nimg
    probs = np.ones(nimg, np.float64) / nimg
    t_data = time.time() - t_start
    log.info("data: %d train images (%d used), %d validation, %.1f s; %.0f MB on %s", len(ids),
             nimg, len(vids), t_data, (ds.lin.numel() + ds.mask.numel()) * 4 / 1e6, device)
    # net and optimizer
    net = build_net(nbase, device, a.seed)
    net.diam_labels.data = torch.tensor([diam.mean()], dtype=torch.float32, device=device)
    opt = make_optimizer(net, a)
    start_epoch, history = 0, []
    if resume_blob:
        sd = torch.load(str(Path(a.resume) / "model"), map_location="cpu", weights_only=True)
        net.load_state_dict(sd)
        ost = resume_blob["optimizer"]
        opt.load_state_dict(ost)  # casts the moments back to the parameters' dtype/device
        torch.set_rng_state(resume_blob["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in resume_blob:
            torch.cuda.set_rng_state(resume_blob["cuda_rng"])
        start_epoch = resume_meta["next_epoch"]
        history = resume_meta["history"]
        log.info("resumed %s at epoch %d of %d", a.resume, start_epoch, a.epochs)
    # mixed precision
    amp = a.amp
    probe_rec = {}
    if device.type != "cuda" and amp in ("auto", "bf16", "fp16") and amp != "auto":
        log.info("--amp %s on %s: autocast on the CPU", amp, device)
    if amp == "auto":
        amp = "off"
        if device.type == "cuda":
            s32 = probe(a, ds, diam, net, device, "off", a.probe_steps)
            s16 = probe(a, ds, diam, net, device, "bf16", a.probe_steps)
            probe_rec = {"seconds_per_step_fp32": round(s32, 5),
                         "seconds_per_step_bf16": round(s16, 5)}
            amp = "bf16" if s16 * 1.15 < s32 else "off"
    steps_per_epoch = -(-nimg_per_epoch // a.batch_size)
    # epochs from a time budget
    if a.time_budget:
        sec = probe_rec.get("seconds_per_step_bf16" if amp == "bf16" else "seconds_per_step_fp32")
        if sec is None:
            sec = probe(a, ds, diam, net, device, amp, a.probe_steps)
        probe_rec["seconds_per_step"] = round(sec, 5)
        probe_rec["seconds_per_epoch"] = round(sec * steps_per_epoch, 4)
        for nb in a.probe_also or []:
            s = probe(a, ds, diam, net, device, amp, a.probe_steps, nbase=nb)
            probe_rec[f"seconds_per_epoch_{','.join(map(str, nb))}"] = round(s * steps_per_epoch, 4)
        left = a.time_budget - (time.time() - t_start) - a.eval_reserve
        if a.deadline:
            left = min(left, a.deadline - time.time() - a.eval_reserve)
        fit = int(math.floor(left * 0.95 / (sec * steps_per_epoch)))
        a.epochs = max(a.min_epochs, min(fit + start_epoch, a.max_epochs))
        probe_rec.update({"seconds_left_for_training": round(left, 1), "epochs_fit": fit,
                          "epochs": a.epochs, "amp": amp})
        log.info("probe %s", probe_rec)
    LR = lr_schedule(a.lr, a.epochs)
    eval_epochs = sorted({max(1, int(round(f * a.epochs))) for f in a.eval_at})
    tr = Trainer(a, ds, diam, net, opt, device, amp)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta_recipe = {
        "nbase": nbase, "lr": a.lr, "weight_decay": a.weight_decay, "sgd": a.sgd,
        "batch_size": a.batch_size, "seed": a.seed, "data_seed": a.data_seed,
        "scale_range": a.scale_range, "nimg_per_epoch": a.nimg_per_epoch, "n_img": a.n_img,
        "min_train_masks": a.min_train_masks, "epochs": a.epochs, "bsize": BSIZE,
        "diam_mean": tn.DIAM_MEAN, "val_split": str(a.val_split) if a.val_split else None,
        "val_split_sha256": sha256_file(a.val_split) if a.val_split else None,
        "optimizer": "SGD momentum 0.9" if a.sgd else "AdamW"}
    stop = {"flag": False}

    def on_term(_sig, _frm):
        stop["flag"] = True
        log.warning("SIGTERM: stopping after this epoch, with a checkpoint")

    signal.signal(signal.SIGTERM, on_term)
    opt_dtype = torch.bfloat16 if a.opt_bf16 else torch.float32

    saved = {"at": None}

    def checkpoint(next_epoch, reason):
        saved["at"] = next_epoch
        save_model(net, out / "model")
        meta = {"next_epoch": next_epoch, "recipe": meta_recipe, "history": history,
                "model_sha256": sha256_file(out / "model"), "reason": reason,
                "opt_dtype": str(opt_dtype)}
        save_opt(opt, out / "model.opt", meta, opt_dtype)

    (out / "epochs.jsonl").unlink(missing_ok=True)
    t_train = time.time()
    epoch_secs = []
    stopped = None
    saved_eval = []
    for epoch in range(start_epoch, a.epochs):
        te = time.time()
        rs, order = epoch_order(epoch, nimg, nimg_per_epoch, probs, a.data_seed)
        lsum = torch.zeros((), device=device)
        batch_losses = []
        for k in range(0, nimg_per_epoch, a.batch_size):
            inds = order[k:k + a.batch_size]
            loss = tr.step(inds, rs, lr=float(LR[epoch]))
            lsum += loss * len(inds)
            if a.batch_losses:  # a synchronisation per step: for comparisons only
                batch_losses.append(round(float(loss.item()), 6))
        tl = float(lsum.item()) / nimg_per_epoch
        epoch_secs.append(time.time() - te)
        history.append({"epoch": epoch, "lr": float(LR[epoch]), "train_loss": round(tl, 6),
                        "seconds": round(epoch_secs[-1], 3)})
        if vs is not None and (epoch % a.test_loss_every == 0 or epoch == a.epochs - 1):
            history[-1]["val_loss"] = round(tr.test_loss(vs, vdiam), 6)
        if a.batch_losses:
            history[-1]["batch_losses"] = batch_losses
        with open(out / "epochs.jsonl", "a") as fh:  # one line per epoch, survives a kill
            fh.write(json.dumps(history[-1]) + "\n")
        if not math.isfinite(tl):
            raise SystemExit(f"train_fast: loss {tl} at epoch {epoch}")
        if epoch % 10 == 0 or epoch == a.epochs - 1 or epoch < 5:
            log.info("epoch %d lr %.6f loss %.4f val loss %s (%.2f s)", epoch, LR[epoch], tl,
                     history[-1].get("val_loss", "-"), epoch_secs[-1])
        done = epoch + 1
        if done in eval_epochs and done != a.epochs:
            p = out / f"model_e{done:04d}"
            save_model(net, p)
            saved_eval.append((done, p))
        late = a.deadline and time.time() + 1.2 * np.median(epoch_secs[-5:]) > \
            a.deadline - a.eval_reserve
        if stop["flag"] or late or (a.stop_after and done >= a.stop_after and done < a.epochs):
            stopped = "SIGTERM" if stop["flag"] else "deadline" if late else "stop-after"
            checkpoint(done, stopped)
            break
        if done % a.save_every == 0 or done == a.epochs:
            checkpoint(done, "final" if done == a.epochs else "periodic")
    train_seconds = time.time() - t_train
    last = history[-1]["epoch"] + 1 if history else start_epoch
    if saved["at"] != last:  # e.g. resumed at or past the end of the schedule
        checkpoint(last, "final" if last >= a.epochs else "periodic")
    rec = {"format": "Cellpose 3 CPnet state dict (torch.save), CPU float32 tensors",
           "recipe": meta_recipe, "device": (torch.cuda.get_device_name(0)
                                             if device.type == "cuda" else "cpu"),
           "amp": amp, "probe": probe_rec, "epochs_done": last, "stopped": stopped,
           "start_epoch": start_epoch, "data_seconds": round(t_data, 1),
           "train_seconds": round(train_seconds, 1),
           "seconds_per_epoch_median": round(float(np.median(epoch_secs)), 4) if epoch_secs else None,
           "n_train_images": len(ids), "n_train_used": nimg, "n_val_images": len(vids),
           "diam_labels": float(net.diam_labels.item()),
           "pack": ({"file": Path(a.pack).name, "sha256": sha256_file(a.pack)} if a.pack else None),
           "train_manifest_sha256": tn.split_info("train", a.pack)[0],
           "history": history}
    from importlib.metadata import version
    rec["versions"] = {"cellpose": version("cellpose"), "torch": torch.__version__,
                       "numpy": np.__version__, "python": platform.python_version()}
    rec["command"] = " ".join(["tools/train/train_fast.py"] + sys.argv[1:])
    rec["model_sha256"] = sha256_file(out / "model")

    def write_rec():  # after training and after each evaluation: a kill loses little
        rec["wall_seconds"] = round(time.time() - t_start, 1)
        tmp = out / "record.json.tmp"
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        os.replace(tmp, out / "record.json")

    rec["cellpose_stock_load"] = stock_load_check(out / "model", nbase)
    write_rec()
    # model selection on the validation split, then dev
    cands = [(last, out / "model")] + sorted(saved_eval, reverse=True)
    rec["validation"] = []
    if vids and not a.no_eval:
        for ep, p in cands:
            if a.deadline and time.time() > a.deadline - 10 and rec["validation"]:
                log.warning("deadline: epoch %d's checkpoint not evaluated", ep)
                continue
            r = evaluate(p, vrgb, vlbl, device, ("model",), vcat)
            r.update({"epoch": ep, "file": p.name, "sha256": sha256_file(p)})
            rec["validation"].append(r)
            write_rec()
            log.info("validation epoch %d: AP@0.5/0.75/0.9 %s %s", ep, r["model"]["ap"],
                     r["model"].get("ap_by_category"))
        best = max(rec["validation"], key=lambda r: (r["model"]["ap"][0], r["model"]["ap"][1],
                                                     r["epoch"]))
        rec["selected"] = {"epoch": best["epoch"], "file": best["file"], "by": "val AP@0.5"}
        if best["file"] != "model":
            shutil.copyfile(out / best["file"], out / "best")
            rec["selected"]["file"] = "best"
    # dev: 2 modes on its 8 images, skipped when the validation's pace says it would not fit
    per_img = max([v["model"]["seconds"] / max(v["model"]["n_images"], 1)
                   for v in rec["validation"]] or [0.0])
    dev_est = per_img * 8 * 2 * 1.5
    if not a.no_eval and (not a.deadline or time.time() + dev_est < a.deadline - 5):
        sel = out / rec.get("selected", {}).get("file", "model")
        dev_ids, drgb, dlbl = load_dev(a)
        rec["dev"] = evaluate(sel, drgb, dlbl, device, ("model", "true"))
        rec["dev"]["file"] = sel.name
        log.info("dev (%s): model diameter %s, true diameters %s", sel.name,
                 rec["dev"]["model"]["ap"], rec["dev"]["true"]["ap"])
    write_rec()
    log.info("wrote %s/{model,model.opt,record.json}", out)
    return rec


def stock_load_check(path, nbase):
    """Whether stock Cellpose loads the file as its own: CellposeModel(pretrained_model=path)
    builds [2,32,64,128,256] and must end up with exactly the file's tensors (other widths:
    None, they need tools/train/train_nuclei.py's shim, docs/training.md)."""
    if list(nbase) != [2, 32, 64, 128, 256]:
        return None
    m = models.CellposeModel(gpu=False, pretrained_model=str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    msd = m.net.state_dict()
    return set(sd) == set(msd) and all(torch.equal(sd[k], msd[k].cpu()) for k in sd)


def load_dev(a):
    ids, _, lbls = tn.load_split("dev", a.dev_limit, pack=a.pack)
    return ids, [rgb_image("dev", k, i, a.pack) for k, i in enumerate(ids)], lbls


# ----------------------------------------------------------------------------- check

def run_check(a):
    """The device augmentation against transforms.random_rotate_and_resize on the same random
    numbers: for a few batches of real training images (both fed the numpy state of one seed)
    the image channel, flows and mask must agree up to OpenCV's fixed-point rounding."""
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    a.val_split = a.val_split if a.val_split and Path(a.val_split).exists() else None
    a.n_img = a.n_img or 24
    (ids, imgs, lbls), _ = load_train_val(a)
    flows = tn.flows_cached("train", ids, lbls, device=torch.device("cpu"), pack=a.pack)
    keep, diam, normed = prepare(imgs, flows)
    flows = [flows[k] for k in keep]
    ds = DeviceSet(normed, flows, device)
    worst = {}
    for b in range(a.check_batches):
        inds = np.random.RandomState(1000 + b).choice(ds.n, size=8, replace=False)
        rsc = diam[inds] / tn.DIAM_MEAN
        np.random.seed(b)
        ref_x, ref_l, _ = transforms.random_rotate_and_resize(
            [normed[i] for i in inds], Y=[flows[i][1:] for i in inds], rescale=rsc,
            scale_range=0.5, xy=(BSIZE, BSIZE))
        params = draw_params(np.random.RandomState(b), inds, diam, tn.DIAM_MEAN, ds.hw)
        X, lbl = augment(ds, inds, params)
        X, lbl = X.cpu().numpy(), lbl.cpu().numpy()
        rng = max(float(np.abs(ref_x).max()), 1.0)
        m = {"image_max_abs": float(np.abs(X - ref_x).max()) / rng,
             "image_mean_abs": float(np.abs(X - ref_x).mean()) / rng,
             "flow_mean_abs": float(np.abs(lbl[:, 1:] - ref_l[:, 1:]).mean()),
             "flow_p999_abs": float(np.quantile(np.abs(lbl[:, 1:] - ref_l[:, 1:]), 0.999)),
             "mask_disagree": float(((lbl[:, 0] > .5) != (ref_l[:, 0] > .5)).mean()),
             "loss_ref_target_mask_frac": float((ref_l[:, 0] > .5).mean())}
        for k, v in m.items():
            worst[k] = max(worst.get(k, 0.0), v)
        log.info("batch %d: %s", b, {k: round(v, 6) for k, v in m.items()})
    # train_seg's test loss (its loop, its _loss_fn_seg) against Trainer.test_loss, on these
    # images with an untrained [2,8,16,32,64] net
    from cellpose import train as cp_train
    net = build_net([2, 8, 16, 32, 64], device, 0)
    np.random.seed(42)
    rperm = np.random.permutation(np.arange(ds.n))
    ref, net_dev = 0.0, net.device
    net.eval()
    with torch.no_grad():
        for k in range(0, ds.n, 8):
            inds = rperm[k:k + 8]
            xi, li = transforms.random_rotate_and_resize(
                [normed[i] for i in inds], Y=[flows[i][1:] for i in inds],
                rescale=diam[inds] / tn.DIAM_MEAN, scale_range=0.5, xy=(BSIZE, BSIZE))[:2]
            y = net(torch.from_numpy(xi).to(net_dev))[0]
            ref += cp_train._loss_fn_seg(li, y, net_dev).item() * len(xi)
    ref /= ds.n
    ns = argparse.Namespace(batch_size=8, scale_range=0.5)
    ours = Trainer(ns, ds, diam, net, None, device, "off").test_loss(ds, diam)
    worst["test_loss_rel_diff"] = abs(ours - ref) / ref
    log.info("test loss: train_seg's loop %.6f, train_fast %.6f", ref, ours)
    print(json.dumps({"batches": a.check_batches, "worst": worst}))
    # limits: bilinear positions agree to OpenCV's 1/1024-pixel fixed point, so values agree
    # to a small fraction of the local gradient; nearest ties at exact half-pixels may flip
    # (measured on 4 batches of 8: 5e-5, 3e-4, 1e-5)
    assert worst["image_mean_abs"] < 2e-4, worst
    assert worst["flow_mean_abs"] < 1e-3, worst
    assert worst["mask_disagree"] < 1e-4, worst
    assert worst["test_loss_rel_diff"] < 1e-3, worst
    log.info("check passed")


# ----------------------------------------------------------------------------- main

def parse_nbase(s):
    return [int(x) for x in s.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cmd", choices=["split", "train", "check", "eval"])
    p.add_argument("--nbase", default="2,32,64,128,256")
    p.add_argument("--epochs", type=int, default=None,
                   help="length of the lr schedule (default 500; on --resume the run's own)")
    p.add_argument("--n-img", type=int, default=None, help="only the first N training images")
    p.add_argument("--nimg-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--sgd", action="store_true", help="SGD momentum 0.9 instead of AdamW")
    p.add_argument("--scale-range", type=float, default=0.5)
    p.add_argument("--min-train-masks", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="torch seed (the net's initial weights)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="added to the epoch number to seed the sampling (0: train_seg's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pack", type=Path, default=None)
    p.add_argument("--val-split", type=Path, default=VAL_SPLIT)
    p.add_argument("--no-val-split", action="store_true", help="train on all of dsb2018/train")
    p.add_argument("--val-limit", type=int, default=None, help="only the first N val images")
    p.add_argument("--dev-limit", type=int, default=None, help="only the first N dev images")
    p.add_argument("--amp", choices=["off", "bf16", "fp16", "auto"], default=None,
                   help="mixed precision (default: auto on CUDA = bf16 if the probe finds it "
                        "15%% faster; off on the CPU)")
    p.add_argument("--out", type=Path, default=Path("/tmp/gpuseg_fast/run"))
    p.add_argument("--resume", type=Path, default=None, help="a run's OUT folder")
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for all of it (data, probe, training, eval reserve): "
                        "picks the epochs")
    p.add_argument("--deadline", type=float, default=None,
                   help="wall-clock end (epoch seconds): training stops in time, checkpointed")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (checkpointed, resumable) once this many epochs are done")
    p.add_argument("--eval-reserve", type=float, default=0.0,
                   help="seconds kept after training for the evaluations")
    p.add_argument("--eval-at", default="0.6,0.8,1.0",
                   help="fractions of the schedule whose checkpoints are scored on val")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--min-epochs", type=int, default=1)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--probe-steps", type=int, default=12)
    p.add_argument("--probe-also", default=None,
                   help="also time these widths (e.g. 2,16,32,64,128; ';' between several)")
    p.add_argument("--opt-bf16", action="store_true",
                   help="store the optimizer moments in bfloat16 (half the size)")
    p.add_argument("--test-loss-every", type=int, default=10,
                   help="the validation images' loss (train_seg's test loss) every N epochs "
                        "and at the last; 0: never")
    p.add_argument("--batch-losses", action="store_true",
                   help="record every batch's loss in the history (synchronises each step)")
    p.add_argument("--check-batches", type=int, default=4)
    p.add_argument("--quota", default="fluo_gray:51,he_color:10,bright_gray:3")
    p.add_argument("--model", type=Path, default=None, help="eval: the model file")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    if a.no_val_split:
        a.val_split = None
    a.eval_at = [float(x) for x in a.eval_at.split(",")]
    a.probe_also = ([parse_nbase(x) for x in a.probe_also.split(";")]
                    if a.probe_also and a.probe_also != "none" else None)
    if a.amp is None:
        a.amp = "auto" if a.device.startswith("cuda") else "off"
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("train_fast: --device cuda but torch sees no CUDA device")
    if a.cmd == "split":
        q = {kv.split(":")[0]: int(kv.split(":")[1]) for kv in a.quota.split(",")}
        make_split(q, a.val_split or VAL_SPLIT)
    elif a.cmd == "check":
        run_check(a)
    elif a.cmd == "eval":
        device = torch.device(a.device)
        torch.set_num_threads(a.threads)
        _, (vids, vrgb, vlbl, vcat) = load_train_val(a)
        res = {"val": evaluate(a.model, vrgb, vlbl, device, ("model", "true"), vcat)}
        _, drgb, dlbl = load_dev(a)
        res["dev"] = evaluate(a.model, drgb, dlbl, device, ("model", "true"))
        print(json.dumps(res, indent=1))
    else:
        run_train(a)


if __name__ == "__main__":
    main()
