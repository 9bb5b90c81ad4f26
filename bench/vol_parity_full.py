#!/usr/bin/env python3
"""bench/vol_parity_full.py: parity of `gpuseg segment` on Z stacks with Cellpose 3.1.1.3's
CellposeModel.eval on the same FULL-WIDTH model file (issue #18: "the bundled model and a
full-width model with random weights"; the bundled model's parity is tests/test_do3d.c and
tests/test_stack.c). A full-width model file is 26 MB, too large for a fixture, so this script
makes everything from fixed seeds and checks it; it is a check, not a benchmark (no timing is
reported).

Model: common.full_width_net(SEED) (Cellpose's CPnet [2, 32, 64, 128, 256], torch seed SEED,
random batch-norm statistics; diam_mean 30), whose head is then calibrated so that the random
net makes masks: as it comes, its outputs are nearly constant (3-D flows ~0.02 std around
offsets of ~1, cellprob summed over the three views -0.79 +- 0.03 on the crop: no masks). The
output layer (CPnet.output[2], a 1x1 convolution: y_c = w_c . h + b_c) is rescaled per channel,
y_c -> a_c (y_c - mu_c) (w_c *= a_c, b_c = a_c (b_c - mu_c)), from one do_3D pass of Cellpose
with the uncalibrated file on the crop (anisotropy 1, no smoothing, compute_masks=False). In
that pass dZ = ZY.y0 + ZX.y0, dX = YX.y1 + ZX.y1 and cellprob = YX.y2 + ZY.y2 + ZX.y2 (core.run_3D
sums the views), so mu0 = mean(dZ) / 2, a0 = FLOW_STD / std(dZ); mu1 = mean(dX) / 2,
a1 = FLOW_STD / std(dX); mu2 = median(cellprob) / 3, a2 = PROB_STD / std(cellprob) make dZ and dX
mean 0 with std FLOW_STD and the 3-D cellprob median 0 with std PROB_STD on the crop (dY, a mix
of y0 and y1, is then roughly centred). The calibrated net is saved with CPnet.save_model; both
programs load that one file (Cellpose: CellposeModel(pretrained_model=FILE); gpuseg: --model
FILE), so the calibration cannot favour either side.

Stacks: tests/fixtures/stack/img3d_crop.tif (12 x 61 x 57 uint16 nuclei, planes 8..19 of
stardist's img3d.tif) and, unless --no-tiled, a 16 x 96 x 96 stack of the crop mirror-tiled in
Z, Y and X. Cases (channels [0, 0], diameter 30 = the model's diam_mean: rescale 1, no resize;
Cellpose's other defaults, cellprob_threshold 0, min_size 15, niter 200):
  a   do_3D, anisotropy 1, flow3D_smooth 0
  b   do_3D, anisotropy 2, flow3D_smooth 0, on planes 0, 2, 4, ... (Z sampled half as densely,
      as tools/fixtures/make_do3d_fixtures.py's case b): Z is resized x2 before the net and the
      flows back after it
  c   do_3D, anisotropy 1, flow3D_smooth 1 (Gaussian, sigma 1 voxel, on dP)
  d   do_3D, anisotropy 2, flow3D_smooth 1, planes 0, 2, 4, ...
  s   stitch_threshold 0.25 (each plane segmented in 2-D, the stack normalised as a whole, then
      utils.stitch3D and fill_holes_and_remove_small_masks), flow_threshold 0.4: random flows
      fail Cellpose's flow-error QC almost everywhere (1 mask left on the crop), so this case
      checks the QC path and needs only 1 mask
  sq  the same with flow_threshold 0 (QC off, as make_net_fixtures.py does for its random net),
      so that the stitching sees every plane's masks
The tiled stack runs cases a, b, c, s and sq.

gpuseg: `gpuseg segment STACK --model FILE --diameter 30 --chan 0 [--do-3d --anisotropy A
--flow3d-smooth S | --stitch-threshold 0.25 --flow-threshold F] --save-flows -o OUT.npy` in a
fresh process (flows: OUT_flows.npy, float32 [4, Z, Y, X] dZ, dY, dX, cellprob for --do-3d,
[Z, 3, Y, X] dY, dX, cellprob per plane for a stitched run).

Compared per case: each flow channel's max |gpuseg - Cellpose| over all voxels, absolute and
relative to the channel's range (max |value| of Cellpose's); number of masks on each side; AP@0.5
of gpuseg's masks against Cellpose's (cellpose.metrics.average_precision, 3-D IoU); the fraction
of voxels whose labels are equal after matching (gpuseg's masks renamed to the Cellpose mask they
match at IoU >= 0.5 by Cellpose's own assignment, metrics._true_positive's costs; unmatched ones
never equal) and without renaming. For the do_3D cases also the two halves apart: `gpuseg masks`
on Cellpose's own flows against Cellpose's masks (the masks stage alone: identical labels
expected), and Cellpose's resize_and_compute_masks on gpuseg's flows against gpuseg's masks.

Tolerances (a case fails, and the script exits 1, when one is missed):
  flows   max |diff| <= FLOW_REL x the channel's range, FLOW_REL = 1e-4. Both programs run the
          net in float32 with convolutions summed in other orders: ~4e-7 of the output range for
          this net on 2-D tiles (docs/net.md). The calibrated head subtracts offsets 30-40x the
          raw outputs' spread (raw_mean / raw_std in the head line), a float32 cancellation both
          programs make, which scales those differences by as much relative to the calibrated
          range (~1.5e-5); each 3-D voxel then sums two or three views and anisotropy 2 resizes Z
          twice (bilinear, float32). Measured on PoCL: <= 9e-6 of range. 1e-4 leaves ~10x for
          other devices (fused multiply-adds, other reduction orders) while a real error (a wrong
          view, axis, resize or smoothing) is of the order of the range itself.
  masks   AP@0.5 >= 0.99 against Cellpose's masks (the issue's bar), also for `gpuseg masks` on
          Cellpose's flows; and Cellpose must find at least MIN_MASKS masks (so that the check is
          not vacuous; case s: 1, see above). Random flows make many basins whose voxels sit on
          ties of the Euler paths, so a flow difference of 1e-5 can move a few voxels (the
          voxel-equality figures show how many); AP@0.5 counts masks, not voxels.

Prints one JSON line per case (and a head line); --out appends them to a file.

    OMP_NUM_THREADS=1 /work/venv/bin/python bench/vol_parity_full.py --build build
        [--work DIR] [--seed 0] [--no-tiled] [--out results.jsonl]
"""
import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CROP = os.path.join(common.ROOT, "tests", "fixtures", "stack", "img3d_crop.tif")
FLOW_STD = 4.0   # std of the calibrated 3-D dZ and dX on the crop (a sum of two views)
PROB_STD = 6.0   # std of the calibrated 3-D cellprob (a sum of three views)
FLOW_REL = 1e-4  # flows tolerance, fraction of the channel's range (see the docstring)
AP_MIN = 0.99
MIN_MASKS = 5
# name: planes step, anisotropy, flow3D_smooth, stitch_threshold, flow_threshold, min masks
CASES = {
    "a": (1, 1.0, 0.0, 0.0, 0.4, MIN_MASKS),
    "b": (2, 2.0, 0.0, 0.0, 0.4, MIN_MASKS),
    "c": (1, 1.0, 1.0, 0.0, 0.4, MIN_MASKS),
    "d": (2, 2.0, 1.0, 0.0, 0.4, MIN_MASKS),
    "s": (1, 1.0, 0.0, 0.25, 0.4, 1),
    "sq": (1, 1.0, 0.0, 0.25, 0.0, MIN_MASKS),
}
STACKS = {"crop": ["a", "b", "c", "d", "s", "sq"], "tiled16x96x96": ["a", "b", "c", "s", "sq"]}


def cellpose_model(path):
    from cellpose import models

    m = models.CellposeModel(gpu=False, pretrained_model=path)
    m.net_ortho = None
    return m


def make_model(work, seed, crop):
    """The calibrated full-width model file (see the docstring) and the calibration numbers."""
    import torch

    raw = os.path.join(work, f"full_width_seed{seed}_raw.pth")
    out = os.path.join(work, f"full_width_seed{seed}_calibrated.pth")
    net = common.full_width_net(seed)
    net.save_model(raw)
    m = cellpose_model(raw)
    diam = float(m.diam_mean)
    _, flows, _ = m.eval(crop, channels=[0, 0], diameter=diam, do_3D=True, compute_masks=False)
    dP, prob = flows[1].astype(np.float64), flows[2].astype(np.float64)
    mu = [dP[0].mean() / 2, dP[2].mean() / 2, np.median(prob) / 3]
    a = [FLOW_STD / dP[0].std(), FLOW_STD / dP[2].std(), PROB_STD / prob.std()]
    conv = net.output[2]
    with torch.no_grad():
        for c in range(3):
            conv.weight.data[c] *= a[c]
            conv.bias.data[c] = a[c] * (conv.bias.data[c] - mu[c])
    net.save_model(out)
    cal = {"seed": seed, "diam_mean": diam, "scale": [float(v) for v in a],
           "offset": [float(v) for v in mu],
           "raw_std": [float(dP[0].std()), float(dP[1].std()), float(dP[2].std()),
                       float(prob.std())],
           "raw_mean": [float(dP[0].mean()), float(dP[1].mean()), float(dP[2].mean()),
                        float(prob.mean())]}
    return out, diam, cal


def match_equal(truth, pred):
    """(fraction of voxels equal after renaming pred's masks to the truth mask they match at
    IoU >= 0.5 by Cellpose's assignment, fraction equal as they are)."""
    from cellpose import metrics
    from scipy.optimize import linear_sum_assignment

    t, p = truth.astype(np.int64), pred.astype(np.int64)
    raw = float((t == p).mean())
    nt, npred = int(t.max()), int(p.max())
    lut = np.arange(npred + 1, dtype=np.int64) + nt + 1  # unmatched: a label truth never has
    lut[0] = 0
    if nt and npred:
        iou = metrics._intersection_over_union(t, p)[1:, 1:]
        n_min = min(iou.shape)
        costs = -(iou >= 0.5).astype(float) - iou / (2 * n_min)
        ti, pi = linear_sum_assignment(costs)
        ok = iou[ti, pi] >= 0.5
        lut[pi[ok] + 1] = ti[ok] + 1
    return float((lut[p] == t).mean()), raw


def ap50(truth, pred):
    """common.ap50, with 1.0 where both sides have no mask (a random net's case s can)."""
    if truth.max() == 0 and pred.max() == 0:
        return 1.0
    return common.ap50(truth, pred)


def run_case(a, model, diam, sname, stack, cname):
    import tifffile

    step, aniso, smooth, stitch, fthr, min_masks = CASES[cname]
    x = np.ascontiguousarray(stack[::step])
    tag = f"{sname}_{cname}"
    img = os.path.join(a.work, f"{tag}.tif")
    tifffile.imwrite(img, x)
    # Cellpose
    m = cellpose_model(model)
    t0 = time.perf_counter()
    if stitch > 0:
        cm, flows, _ = m.eval(x, channels=[0, 0], diameter=diam, stitch_threshold=stitch,
                              flow_threshold=fthr)
        cflows = np.concatenate([flows[1], flows[2][None]]).astype(np.float32)  # [3, Z, Y, X]
    else:
        cm, flows, _ = m.eval(x, channels=[0, 0], diameter=diam, do_3D=True,
                              anisotropy=None if aniso == 1 else aniso, flow3D_smooth=smooth)
        cflows = np.concatenate([flows[1], flows[2][None]]).astype(np.float32)  # [4, Z, Y, X]
    t_cp = time.perf_counter() - t0
    cm = np.asarray(cm)
    # gpuseg
    out = os.path.join(a.work, f"{tag}_gpuseg.npy")
    cmd = [os.path.join(a.build, "gpuseg"), "segment", img, "--model", model, "--diameter",
           repr(diam), "--chan", "0", "--save-flows", "-o", out, "--quiet"]
    if stitch > 0:
        cmd += ["--stitch-threshold", repr(stitch), "--flow-threshold", repr(fthr)]
    else:
        cmd += ["--do-3d", "--anisotropy", repr(aniso), "--flow3d-smooth", repr(smooth)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    t_g = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{tag}: gpuseg failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    gm = np.load(out)
    gflows = np.load(out[:-4] + "_flows.npy")
    if stitch > 0:
        gflows = gflows.transpose(1, 0, 2, 3)  # [Z, 3, Y, X] -> [3, Z, Y, X]
    if gm.shape != cm.shape or gflows.shape != cflows.shape:
        sys.exit(f"{tag}: shapes differ: masks {gm.shape} vs {cm.shape}, flows {gflows.shape} "
                 f"vs {cflows.shape}")
    names = ["dY", "dX", "cellprob"] if stitch > 0 else ["dZ", "dY", "dX", "cellprob"]
    fl = {}
    for k, n in enumerate(names):
        d = np.abs(gflows[k].astype(np.float64) - cflows[k])
        rng = float(np.abs(cflows[k]).max())
        fl[n] = {"max_abs_err": float(d.max()), "range": rng,
                 "max_rel_err": float(d.max() / rng) if rng else float(d.max()),
                 "mean_abs_err": float(d.mean())}
    eq, eq_raw = match_equal(cm, gm)
    halves = None
    if stitch == 0:  # the masks stage apart: each program's masks on the other's flows
        import torch
        from cellpose import dynamics

        cpath = os.path.join(a.work, f"{tag}_cellpose_flows.npy")
        np.save(cpath, cflows)
        mout = os.path.join(a.work, f"{tag}_gpuseg_masks_on_cellpose_flows.npy")
        r = subprocess.run([os.path.join(a.build, "gpuseg"), "masks", cpath, "-o", mout,
                            "--niter", "200"], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{tag}: gpuseg masks failed ({r.returncode}): {r.stderr[-2000:]}")
        g_on_c = np.load(mout)
        c_on_g = dynamics.resize_and_compute_masks(gflows[:3], gflows[3], niter=200, do_3D=True,
                                                   device=torch.device("cpu"))
        e1, _ = match_equal(cm, g_on_c)
        e2, _ = match_equal(gm, c_on_g)
        halves = {"gpuseg_masks_on_cellpose_flows": {
                      "n_masks": int(g_on_c.max()), "ap50": ap50(cm, g_on_c),
                      "identical": bool(np.array_equal(cm, g_on_c)), "voxels_equal_matched": e1},
                  "cellpose_masks_on_gpuseg_flows": {
                      "n_masks": int(c_on_g.max()), "ap50": ap50(gm, c_on_g),
                      "identical": bool(np.array_equal(gm, c_on_g)), "voxels_equal_matched": e2}}
    res = {"case": tag, "stack": sname, "shape": list(x.shape), "planes": f"0::{step}",
           "mode": "stitch" if stitch > 0 else "do_3D", "anisotropy": aniso,
           "flow3D_smooth": smooth, "stitch_threshold": stitch, "flow_threshold": fthr,
           "diameter": diam, "flows": fl, "n_masks_cellpose": int(cm.max()),
           "n_masks_gpuseg": int(gm.max()), "ap50": ap50(cm, gm),
           "voxels_equal_matched": eq, "voxels_equal_raw": eq_raw,
           "fg_voxels_cellpose": int((cm > 0).sum()), "fg_voxels_gpuseg": int((gm > 0).sum()),
           "masks_stage_apart": halves,
           "seconds_cellpose": round(t_cp, 2), "seconds_gpuseg": round(t_g, 2)}
    fails = []
    for n, f in fl.items():
        if not f["max_abs_err"] <= FLOW_REL * f["range"]:
            fails.append(f"{n}: max |diff| {f['max_abs_err']:.3g} > {FLOW_REL:g} x range "
                         f"{f['range']:.3g}")
    if res["n_masks_cellpose"] < min_masks:
        fails.append(f"Cellpose found {res['n_masks_cellpose']} masks (< {min_masks})")
    if not res["ap50"] >= AP_MIN:
        fails.append(f"AP@0.5 {res['ap50']:.4f} < {AP_MIN}")
    if halves and not halves["gpuseg_masks_on_cellpose_flows"]["ap50"] >= AP_MIN:
        fails.append("gpuseg masks on Cellpose's flows: AP@0.5 "
                     f"{halves['gpuseg_masks_on_cellpose_flows']['ap50']:.4f} < {AP_MIN}")
    res["pass"] = not fails
    res["fails"] = fails
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(common.ROOT, "build"))
    ap.add_argument("--work", default=None, help="temporary folder (default: a new one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tiled", action="store_true", help="the crop only")
    ap.add_argument("--cases", default=None, help="comma-separated STACK_CASE names to run")
    ap.add_argument("--out", default=None, help="JSON lines appended here")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("cellpose").setLevel(logging.ERROR)
    import tifffile
    import torch

    torch.set_num_threads(1)
    a.work = a.work or tempfile.mkdtemp(prefix="gpuseg-volpar-")
    os.makedirs(a.work, exist_ok=True)
    crop = tifffile.imread(CROP)
    assert crop.shape == (12, 61, 57), crop.shape
    model, diam, cal = make_model(a.work, a.seed, crop)
    r = subprocess.run([os.path.join(a.build, "gpuseg"), "devices"], capture_output=True,
                       text=True)
    head = {"part": "head", "script": "bench/vol_parity_full.py", "date": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": common.git_describe(),
        "cpu": common.cpu_model(), "cores": os.cpu_count(), "loadavg": common.loadavg(),
        "versions": common.versions(), "devices": r.stdout.strip(),
        "model": f"full-width random CPnet, seed {a.seed}, head calibrated", "calibration": cal,
        "tolerances": {"flow_rel": FLOW_REL, "ap50_min": AP_MIN, "min_masks_cellpose": MIN_MASKS}}
    lines = [head]
    print(json.dumps(head), flush=True)
    stacks = {"crop": crop}
    if not a.no_tiled:
        stacks["tiled16x96x96"] = common.mirror_tiled_3d(crop, 16, 96)
    want = set(a.cases.split(",")) if a.cases else None
    failed = []
    for sname, st in stacks.items():
        for cname in STACKS[sname]:
            if want and f"{sname}_{cname}" not in want:
                continue
            res = run_case(a, model, diam, sname, st, cname)
            lines.append(res)
            print(json.dumps(res), flush=True)
            if not res["pass"]:
                failed.append(res["case"])
    if a.out:
        with open(a.out, "a") as f:
            for ln in lines:
                f.write(json.dumps(ln) + "\n")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    print("all cases within tolerance", file=sys.stderr)


if __name__ == "__main__":
    main()
