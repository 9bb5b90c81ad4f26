#!/usr/bin/env python3
"""Validation of a model file on dsb2018/dev (and/or the validation split of dsb2018/train held
out by tools/train/train_fast.py, tools/train/val_split.tsv), by gpuseg and by Cellpose 3.1
running the same file.

For each diameter mode it segments the 8 dev images with `gpuseg segment` and (except for
"estimate", which only gpuseg has) with Cellpose's CellposeModel.eval, and reports:
  - pooled AP@0.5/0.75/0.9 of each against the ground truth (TP, FP, FN summed over the images,
    AP = TP / (TP + FP + FN), cellpose.metrics.average_precision);
  - the agreement of gpuseg with Cellpose: pooled AP@0.5/0.75/0.9 of gpuseg's masks scored
    against Cellpose's masks as if they were the truth (issue #6 asks for >= 0.99 at 0.5).
Modes: "model" = the model's diam_labels (Cellpose's diameter=None), "true" = each image's
ground-truth median diameter (utils.diameters), "estimate" = gpuseg's default (diameter
estimated from a first pass; reported per image beside the true diameter).

With --split dev,val the AP is pooled over both and also reported per split ("by_split").

Usage (repository root, Cellpose in .venv, gpuseg built):
  .venv/bin/python tools/eval_dev.py --model models/nuclei_gpuseg_v2 [--gpuseg build/gpuseg]
      [--modes model,true,estimate] [--split dev|val|dev,val] [--limit N] [--json out.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
import train_nuclei as tn  # noqa: E402  (data loading and the Cellpose shim live there)
from cellpose import metrics, utils  # noqa: E402

THR = [0.5, 0.75, 0.9]


def pooled(gts, preds, sel=None):
    if sel is not None:
        gts, preds = [gts[k] for k in sel], [preds[k] for k in sel]
    _, tp, fp, fn = metrics.average_precision(gts, preds, threshold=THR)
    tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
    return [round(float(x), 4) for x in tp / np.maximum(tp + fp + fn, 1)]


def split_images(split, limit):
    """(ids, image paths, label paths) of 'dev' or 'val' (the ids of tools/train/val_split.tsv,
    in dsb2018/train)."""
    if split == "dev":
        ids = tn.read_manifest("dev")
    elif split == "val":
        lines = (tn.REPO / "tools" / "train" / "val_split.tsv").read_text().splitlines()[1:]
        ids = [ln.split("\t")[0] for ln in lines if ln.strip()]
        split = "train"
    else:
        raise SystemExit(f"eval_dev: --split {split}: not dev or val")
    ids = ids[:limit] if limit else ids
    return (ids, [tn.DATA / split / "images" / f"{i}.png" for i in ids],
            [tn.DATA / split / "labels" / f"{i}.png" for i in ids])


def gpuseg_run(exe, model, paths, diameter_args, outdir):
    """Runs one `gpuseg segment` over all images; returns the label arrays and the sidecars."""
    cmd = [exe, "segment", "--model", str(model), "--save-dir", str(outdir), "--quiet"]
    cmd += diameter_args + [str(p) for p in paths]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    secs = time.time() - t0
    labs, sides = [], []
    for p in paths:
        side = json.loads((outdir / f"{p.stem}_segmentation.json").read_text())
        raw = np.fromfile(outdir / f"{p.stem}_segmentation.bin", dtype=np.dtype(side["dtype"]))
        labs.append(raw.reshape(side["shape"]).astype(np.int32))
        sides.append(side)
    return labs, sides, secs


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--gpuseg", default=str(tn.REPO / "build" / "gpuseg"))
    ap.add_argument("--modes", default="model,true,estimate")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--split", default="dev", help="dev, val or dev,val")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each split")
    a = ap.parse_args()

    ids, paths, lpaths, group = [], [], [], []
    for sp in a.split.split(","):
        i, p, lp = split_images(sp, a.limit)
        ids += i
        paths += p
        lpaths += lp
        group += [sp] * len(i)
    if len(set(p.name for p in paths)) != len(paths):
        raise SystemExit("eval_dev: two images share a file name")
    by_split = {sp: [k for k, g in enumerate(group) if g == sp] for sp in dict.fromkeys(group)}
    rgbs = [tn.load_rgb(p) for p in paths]
    gts = [tn.load_labels(p) for p in lpaths]
    true_d = [float(utils.diameters(g)[0]) for g in gts]
    cp, nb = tn.cellpose_model(a.model)
    res = {"model": str(a.model), "model_sha256": tn.sha256_file(a.model), "nbase": nb,
           "diam_mean": cp.diam_mean, "diam_labels": cp.diam_labels, "thresholds": THR,
           "split": a.split, "images": ids, "true_diameters": [round(d, 3) for d in true_d]}
    for mode in a.modes.split(","):
        with tempfile.TemporaryDirectory() as td:
            out = Path(td)
            if mode == "estimate":
                # gpuseg's default: no diameter flag
                glabs, sides, gsecs = gpuseg_run(a.gpuseg, a.model, paths, [], out)
                diams = [None] * len(ids)
            else:
                diams = [cp.diam_labels if mode == "model" else d for d in true_d]
                glabs, sides = [], []
                gsecs = 0.0
                # one process per image: each has its own diameter
                for k, p in enumerate(paths):
                    sub = out / str(k)
                    sub.mkdir()
                    l, s, t = gpuseg_run(a.gpuseg, a.model, [p], ["--diameter", repr(diams[k])],
                                         sub)
                    glabs += l
                    sides += s
                    gsecs += t
        r = {"gpuseg_ap": pooled(gts, glabs), "gpuseg_seconds": round(gsecs, 1),
             "gpuseg_ap_by_split": {sp: pooled(gts, glabs, sel) for sp, sel in by_split.items()},
             "gpuseg_n_masks": [int(x.max()) for x in glabs],
             "gpuseg_diameters": [round(float(s["diameter"]), 3) for s in sides]}
        if mode != "estimate":
            t0 = time.time()
            cl = [cp.eval(img, channels=tn.CHANNELS, channel_axis=2, diameter=d)[0]
                  for img, d in zip(rgbs, diams)]
            r["cellpose_seconds"] = round(time.time() - t0, 1)
            r["cellpose_ap"] = pooled(gts, cl)
            r["cellpose_ap_by_split"] = {sp: pooled(gts, cl, sel) for sp, sel in by_split.items()}
            r["cellpose_n_masks"] = [int(x.max()) for x in cl]
            r["agreement_ap"] = pooled(cl, glabs)
        else:
            err = [abs(g - t) / t for g, t in zip(r["gpuseg_diameters"], true_d)]
            r["diameter_rel_error"] = [round(e, 3) for e in err]
            r["diameter_within_15pct"] = int(sum(e <= 0.15 for e in err))
        res[mode] = r
        print(f"{mode}: {json.dumps(r)}", file=sys.stderr)
    text = json.dumps(res, indent=1)
    if a.json:
        a.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
