#!/usr/bin/env python3
"""bench/vol_vs_cellpose.py: 3-D segmentation (issue #18), gpuseg against Cellpose 3.1 on the same
stacks and the same model file, in one script (one side after the other, interleaved, so that
both see about the same load on a shared machine). For each size Z x S x S:

  stack   stardist's img3d.tif (31 x 61 x 57 nuclei, ../shared/data/stardist-sample) mirrored in Z,
          Y and X and tiled to Z x S x S (uint16 TIFF).
  do3d    `gpuseg segment STACK --do-3d` (a fresh process: start-up, model load, read and write
          included) against a fresh Python process that imports Cellpose, loads the same model
          file (the bundled one, common.bundled_cellpose_model), reads the stack and runs
          CellposeModel.eval(do_3D=True) (this script with --cellpose-eval), then writes the
          labels. Both: channels [0, 0], the same diameter (default 17 = the bundled model's
          diam_mean: rescale 1, so the stack is not resized), anisotropy 1. Wall time, CPU time
          (user + sys of the process and its children, from wait4) and peak RSS (GNU time %M)
          of each process; the child also reports its eval time alone. The labels are compared
          (AP@0.5 of gpuseg's against Cellpose's) before the numbers are reported.
  masks   3-D masks alone on the same flows: Cellpose's (the float32 [4, Z, Y, X] dP and cellprob
          its eval returned) through `gpuseg masks FLOWS.npy` (a fresh process: npy read, device
          set-up and labels write included, its wall and CPU time reported; and the library
          call alone, wall and CPU time of the process's threads from its JSON line: what
          Cellpose's figure measures) against Cellpose's
          dynamics.resize_and_compute_masks(dP, cellprob, niter, do_3D=True) timed in a Python
          process that has already imported Cellpose and loaded the flows (--cellpose-masks), both
          with niter = trunc(200 / rescale) as eval uses. Labels compared (AP@0.5).

The first gpuseg run of the script is an untimed warm-up on a small stack (program cache and
convolution choices filled: what every later run sees). Repeats (--repeats, default 1: a 64 x 512
x 512 do_3D run of Cellpose takes many minutes on 2 cores) give min/median/max.

    /work/venv/bin/python bench/vol_vs_cellpose.py --build build --work DIR
        [--sizes 32x256x256,64x512x512] [--repeats N] [--diameter 17] [--out results.json]
        [--masks-only]   (the masks part alone, on the flows an earlier run left in DIR)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

IMG3D = os.path.join(common.DATA, "stardist-sample", "package_data", "img3d.tif")


def stack(Z, S):
    """img3d.tif mirrored along every axis and tiled to Z x S x S (deterministic)."""
    import tifffile

    return common.mirror_tiled_3d(tifffile.imread(IMG3D), Z, S)


def run_measured(cmd, env=None, timeout=7200):
    """(wall s, cpu s (user + sys of the process tree), peak RSS MiB, rc, stdout, stderr). Peak
    RSS from GNU time's %M (see common.run_peak for why not wait4's), CPU from wait4 on it."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as ft:
        full = [common.GNU_TIME, "-f", "%M", "-o", ft.name] + list(cmd)
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=fo, stderr=fe, env=env)
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                p.kill()
                os.wait4(p.pid, 0)
                raise RuntimeError(f"{cmd[0]} timed out after {timeout} s")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        lines = [ln for ln in open(ft.name).read().split("\n") if ln.strip().isdigit()]
        peak = int(lines[-1]) / 1024.0 if lines else None
        return wall, ru.ru_utime + ru.ru_stime, peak, rc, fo.read(), fe.read()


def cellpose_eval_child(image, model, diameter, out, flows_out):
    """--cellpose-eval: import, load the model, read, eval(do_3D=True), save labels (+ flows)."""
    warnings.filterwarnings("ignore")
    import tifffile

    m = common.bundled_cellpose_model(model)
    m.net_ortho = None  # CellposeModel(pretrained_model=False) leaves it unset
    img = tifffile.imread(image)
    t0 = time.perf_counter()
    c0 = time.process_time()
    masks, flows, _ = m.eval(img, channels=[0, 0], diameter=diameter, do_3D=True)
    t1 = time.perf_counter()
    c1 = time.process_time()
    np.save(out, masks.astype(np.uint32 if masks.max() > 65535 else np.uint16))
    if flows_out:
        np.save(flows_out, np.concatenate([flows[1], flows[2][None]]).astype(np.float32))
    print(json.dumps({"eval_s": t1 - t0, "eval_cpu_s": c1 - c0, "n_masks": int(masks.max()),
                      "rescale": float(np.float32(m.diam_mean) / np.float32(diameter))}))


def cellpose_masks_child(flows_path, niter, out, repeats):
    """--cellpose-masks: resize_and_compute_masks(do_3D=True) on saved flows, timed in-process."""
    warnings.filterwarnings("ignore")
    import torch
    from cellpose import dynamics

    f = np.load(flows_path)
    ts, cs = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        m = dynamics.resize_and_compute_masks(f[:3], f[3], niter=niter, do_3D=True,
                                              device=torch.device("cpu"))
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    np.save(out, m.astype(np.uint32 if m.max() > 65535 else np.uint16))
    print(json.dumps({"masks_s": ts, "masks_cpu_s": cs, "n_masks": int(m.max())}))


def eval_niter(rescale):
    """Cellpose eval's niter for a rescale factor: trunc(1 / rescale * 200) in float32."""
    return int(np.uint32(np.float32(1.0) / np.float32(rescale) * np.float32(200.0)))


def summary(v):
    return {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
            "max": round(max(v), 3)}


def bench_masks(a, Z, S, env, c_flows, niter):
    """3-D masks alone on Cellpose's flows c_flows: `gpuseg masks` (a fresh process; its JSON line
    also gives the library call's own wall and CPU time) against Cellpose's
    resize_and_compute_masks timed in-process; labels compared."""
    w = a.work
    gm_out = os.path.join(w, f"gpuseg_masks_{Z}x{S}.npy")
    cm_out = os.path.join(w, f"cellpose_masks_{Z}x{S}.npy")
    gm, calls = [], []
    for _ in range(a.repeats):
        wall, cpu, rss, rc, out, err = run_measured(
            [os.path.join(a.build, "gpuseg"), "masks", c_flows, "-o", gm_out, "--niter",
             str(niter)], env)
        if rc:
            sys.exit(f"gpuseg masks failed ({rc}): {err.strip()[-500:]}")
        gm.append((wall, cpu, rss))
        line = json.loads(out.strip().splitlines()[-1])
        calls.append((line["seconds"], line["cpu_seconds"]))
    wall, cpu, rss, rc, out, err = run_measured(
        [sys.executable, os.path.abspath(__file__), "--cellpose-masks", c_flows, str(niter),
         cm_out, str(a.repeats)])
    if rc:
        sys.exit(f"cellpose masks failed ({rc}): {err.strip()[-800:]}")
    cm = json.loads(out.strip().splitlines()[-1])
    mg, mc = np.load(gm_out), np.load(cm_out)
    mcheck = {"n_masks_gpuseg": int(mg.max()), "n_masks_cellpose": int(mc.max()),
              "ap50_vs_cellpose": common.ap50(mc, mg), "identical_voxels": float((mg == mc).mean())}
    cw, cc = statistics.median(cm["masks_s"]), statistics.median(cm["masks_cpu_s"])
    return {
        "niter": niter, "check": mcheck,
        "gpuseg_process_wall_s": summary([x[0] for x in gm]),
        "gpuseg_process_cpu_s": summary([x[1] for x in gm]),
        "gpuseg_call_wall_s": summary([x[0] for x in calls]),
        "gpuseg_call_cpu_s": summary([x[1] for x in calls]),
        "gpuseg_peak_rss_mib": round(max(x[2] for x in gm), 1),
        "cellpose_in_process_s": summary(cm["masks_s"]),
        "cellpose_in_process_cpu_s": summary(cm["masks_cpu_s"]),
        "cellpose_process_peak_rss_mib": round(rss, 1),
        "ratio_wall_cellpose_over_gpuseg": round(
            cw / statistics.median([x[0] for x in gm]), 2),
        "ratio_cpu_cellpose_over_gpuseg": round(
            cc / statistics.median([x[1] for x in gm]), 2),
        "ratio_call_wall_cellpose_over_gpuseg": round(
            cw / statistics.median([x[0] for x in calls]), 2),
        "ratio_call_cpu_cellpose_over_gpuseg": round(
            cc / statistics.median([x[1] for x in calls]), 2),
    }


def bench_size(a, Z, S, env):
    import tifffile

    w = a.work
    img = os.path.join(w, f"stack_{Z}x{S}x{S}.tif")
    if not os.path.exists(img):
        tifffile.imwrite(img, stack(Z, S))
    g_out = os.path.join(w, f"gpuseg_{Z}x{S}.npy")
    c_out = os.path.join(w, f"cellpose_{Z}x{S}.npy")
    c_flows = os.path.join(w, f"cellpose_flows_{Z}x{S}.npy")
    g_cmd = [os.path.join(a.build, "gpuseg"), "segment", img, "--model", common.BUNDLED_MODEL,
             "--diameter", str(a.diameter), "--do-3d", "-o", g_out]
    c_cmd = [sys.executable, os.path.abspath(__file__), "--cellpose-eval", img,
             common.BUNDLED_MODEL, str(a.diameter), c_out]
    g, c, child = [], [], []
    for r in range(a.repeats):  # interleaved
        wall, cpu, rss, rc, _, err = run_measured(g_cmd, env)
        if rc:
            sys.exit(f"gpuseg segment failed ({rc}): {err.strip()[-500:]}")
        g.append((wall, cpu, rss, err.strip().splitlines()[-1]))
        wall, cpu, rss, rc, out, err = run_measured(c_cmd + ([c_flows] if r == 0 else []))
        if rc:
            sys.exit(f"cellpose eval failed ({rc}): {err.strip()[-800:]}")
        c.append((wall, cpu, rss))
        child.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{Z}x{S}x{S} repeat {r}: gpuseg {g[-1][0]:.1f} s (cpu {g[-1][1]:.1f}), cellpose "
              f"{c[-1][0]:.1f} s (cpu {c[-1][1]:.1f})", file=sys.stderr)
    ours, theirs = np.load(g_out), np.load(c_out)
    check = {"n_masks_gpuseg": int(ours.max()), "n_masks_cellpose": int(theirs.max()),
             "ap50_vs_cellpose": common.ap50(theirs, ours),
             "identical_voxels": float((ours == theirs).mean())}
    rescale = child[0]["rescale"]
    niter = eval_niter(rescale)
    masks = bench_masks(a, Z, S, env, c_flows, niter)
    gw, cw = [x[0] for x in g], [x[0] for x in c]
    gc, cc = [x[1] for x in g], [x[1] for x in c]
    res = {
        "size": [Z, S, S], "voxels": Z * S * S, "diameter": a.diameter, "rescale": rescale,
        "repeats": a.repeats, "check": check,
        "gpuseg_wall_s": summary(gw), "gpuseg_cpu_s": summary(gc),
        "gpuseg_peak_rss_mib": round(max(x[2] for x in g), 1),
        "gpuseg_line": g[-1][3],
        "cellpose_wall_s": summary(cw), "cellpose_cpu_s": summary(cc),
        "cellpose_peak_rss_mib": round(max(x[2] for x in c), 1),
        "cellpose_eval_s": summary([x["eval_s"] for x in child]),
        "cellpose_eval_cpu_s": summary([x["eval_cpu_s"] for x in child]),
        "ratio_wall_cellpose_over_gpuseg": round(statistics.median(cw) / statistics.median(gw), 2),
        "ratio_cpu_cellpose_over_gpuseg": round(statistics.median(cc) / statistics.median(gc), 2),
        "ratio_rss_gpuseg_over_cellpose": round(max(x[2] for x in g) / max(x[2] for x in c), 3),
        "masks": masks,
    }
    return res


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--cellpose-eval":
        cellpose_eval_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5],
                            sys.argv[6] if len(sys.argv) > 6 else None)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--cellpose-masks":
        cellpose_masks_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(common.ROOT, "build"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--sizes", default="32x256x256,64x512x512")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--diameter", type=float, default=17.0)
    ap.add_argument("--out", default=None, help="JSON lines appended here as sizes finish")
    ap.add_argument("--masks-only", action="store_true",
                    help="only the masks part, on Cellpose's flows that an earlier run left in "
                         "--work (cellpose_flows_ZxS.npy)")
    a = ap.parse_args()
    if not os.path.exists(IMG3D):
        sys.exit(f"{IMG3D}: missing (the stardist sample of ../shared/data)")
    a.work = a.work or tempfile.mkdtemp(prefix="gpuseg-vol-")
    os.makedirs(a.work, exist_ok=True)
    env = dict(os.environ)
    head = {"part": "head", "cpu": common.cpu_model(), "cores": os.cpu_count(),
            "loadavg_start": common.loadavg(), "versions": common.versions(),
            "commit": common.git_describe(), "model": "models/nuclei_gpuseg_v2 (bundled)"}
    print(json.dumps(head), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(head) + "\n")
    # untimed warm-up: program cache, convolution choices
    import tifffile

    warm = os.path.join(a.work, "warm.tif")
    tifffile.imwrite(warm, stack(8, 64))
    subprocess.run([os.path.join(a.build, "gpuseg"), "segment", warm, "--model",
                    common.BUNDLED_MODEL, "--diameter", str(a.diameter), "--do-3d", "--quiet", "-o",
                    os.path.join(a.work, "warm.npy")], env=env, check=True)
    for size in a.sizes.split(","):
        Z, Y, X = (int(v) for v in size.lower().split("x"))
        assert Y == X, "square planes only"
        if a.masks_only:
            flows = os.path.join(a.work, f"cellpose_flows_{Z}x{Y}.npy")
            if not os.path.exists(flows):
                sys.exit(f"{flows}: missing (run without --masks-only first)")
            # eval's niter: trunc(200 / rescale), rescale = diam_mean (17, the bundled model's)
            # / diameter in float32
            niter = eval_niter(np.float32(17.0) / np.float32(a.diameter))
            res = {"size": [Z, Y, Y], "voxels": Z * Y * Y, "diameter": a.diameter,
                   "repeats": a.repeats, "masks": bench_masks(a, Z, Y, env, flows, niter)}
        else:
            res = bench_size(a, Z, Y, env)
        res["loadavg_end"] = common.loadavg()
        print(json.dumps(res), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
