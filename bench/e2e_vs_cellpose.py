#!/usr/bin/env python3
"""bench/e2e_vs_cellpose.py: whole-program measurements, gpuseg against Cellpose 3.1 on the same
images and the same model file, in one script (one side after the other, interleaved, so that
both see about the same load on a shared machine). Three parts, each printing one JSON line:

  cli     `gpuseg segment` against the `cellpose` command (python -m cellpose) on a 1024^2 image
          mirror-tiled from a real dsb2018 image (common.TILE_SOURCE), wall time including start-up (process launch, imports,
          model load, image read, mask file write). The model is the full-width random-weight
          CPnet [2,32,64,128,256] (common.full_width_net, saved with CPnet.save_model), because
          the `cellpose` command cannot run a narrower net such as the bundled model. gpuseg runs
          once cold (empty program cache and convolution-choice table, PoCL's kernel cache off)
          and then warm (the program cache that cold run filled: what every later run sees);
          the labels of both programs are compared (AP at IoU 0.5) before the timed runs
          (--no-cli-warmup, used by --quick: gpuseg's untimed run is warm instead of cold, and
          the cellpose command's first run is timed).
  memory  peak RSS (GNU time's %M; common.run_peak) of `gpuseg segment` against Cellpose's
          CellposeModel.eval in a fresh python process (this script with --cellpose-eval) on a
          4096^2 tiled image with the bundled model (models/nuclei_gpuseg_v2, diameter 0:
          diam_labels scaling on both sides). On PoCL the device buffers are host memory, so
          gpuseg's RSS counts them. Wall times of both runs (start-up included) are reported too.
  permp   gpuseg_segment in one process (bench_segment: start-up excluded, one warm-up per
          size) on tiled images of the given sides with the bundled model, with GPUSEG_PROFILE=1
          (per-kernel times from OpenCL events); the 1024^2 labels are checked against
          Cellpose's eval of the same model and image (AP at IoU 0.5), whose warm in-process
          time is reported beside.

    .venv/bin/python bench/e2e_vs_cellpose.py --build build-bench --work DIR
        [--parts cli,memory,permp] [--repeats N (cli)] [--sides 512,1024,2048]
        [--permp-repeats N] [--mem-side 4096]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def ap50(a, b):
    from cellpose import metrics

    return float(metrics.average_precision([a.astype(np.int32)], [b.astype(np.int32)],
                                           threshold=[0.5])[0][0][0])


def read_labels(path):
    import tifffile

    return np.asarray(tifffile.imread(path))


def gpuseg_cmd(build, image, model, out, diameter, quiet=True):
    return [os.path.join(build, "gpuseg"), "segment", image, "--model", model, "--diameter",
            str(diameter), "--format", "tif", "-o", out] + (["--quiet"] if quiet else [])


def stage_split(stderr):
    """gpuseg segment's per-image line: '... N s (network X s, masks Y s)'."""
    m = re.search(r"([\d.]+) s \(network ([\d.]+) s, masks ([\d.]+) s\)", stderr)
    return {"image_s": float(m.group(1)), "network_s": float(m.group(2)),
            "masks_s": float(m.group(3))} if m else None


def part_cli(a):
    work = a.work
    image = common.write_tiled(1024, work)
    model = os.path.join(work, "full_width_random.pth")
    if not os.path.exists(model):
        common.save_full_width_model(model)
    cache = os.path.join(work, "gpuseg-cache-cli")
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(cache)
    env = dict(os.environ, GPUSEG_CACHE_DIR=cache)
    g_out = os.path.join(work, "gpuseg_1024.tif")
    cp_dir = os.path.join(work, "cellpose_cli")
    os.makedirs(cp_dir, exist_ok=True)
    cp_cmd = [sys.executable, "-m", "cellpose", "--image_path", image, "--pretrained_model",
              model, "--diameter", "30", "--save_tif", "--no_npy", "--savedir", cp_dir]
    cp_out = os.path.join(cp_dir, "tiled_1024_cp_masks.tif")

    splits = []

    def run(cmd, e=None):
        wall, peak, rc, out, err = common.run_peak(cmd, env=e)
        if rc != 0:
            sys.exit(f"{cmd[0]} {cmd[1]} failed ({rc}): {err.strip()[-500:]}")
        if cmd[0].endswith("gpuseg"):
            splits.append(stage_split(err))
        return wall, peak

    cold_env = dict(env, POCL_KERNEL_CACHE="0")
    cold = cold_peak = cp_first = None
    if a.no_cli_warmup:
        # quick: gpuseg's untimed first run is warm (the caller's program cache, filled by the
        # suite's earlier parts) and fills the convolution choices of this tile count's last
        # batch; the cellpose command's first run is timed (its labels are the reference).
        env = dict(os.environ)
        run(gpuseg_cmd(a.build, image, model, g_out, 30, quiet=False), env)
        cp_first_t, cp_first_rss = run(cp_cmd)
    else:
        cold, cold_peak = run(gpuseg_cmd(a.build, image, model, g_out, 30, quiet=False),
                              cold_env)
        cp_first, _ = run(cp_cmd)
    # correctness before timing: same labels (up to numbering) from both programs
    ours, theirs = read_labels(g_out), read_labels(cp_out)
    check = {"n_masks_gpuseg": int(ours.max()), "n_masks_cellpose": int(theirs.max()),
             "ap50": ap50(theirs, ours) if theirs.max() and ours.max() else None,
             "identical_pixels": float((ours == theirs).mean())}
    g_t, c_t, g_rss, c_rss = [], [], [], []
    for r in range(a.repeats):  # interleaved: both sides see about the same load
        w, p = run(gpuseg_cmd(a.build, image, model, g_out, 30, quiet=False), env)
        g_t.append(w)
        g_rss.append(p)
        w, p = (cp_first_t, cp_first_rss) if a.no_cli_warmup and r == 0 else run(cp_cmd)
        c_t.append(w)
        c_rss.append(p)
    gm, cm = statistics.median(g_t), statistics.median(c_t)
    return {"part": "cli", "image": "dsb2018 dev 07fb37aa (fluorescence nuclei) mirror-tiled to 1024x1024 (uint8 TIFF)",
            "model": "full-width random CPnet [2,32,64,128,256], torch.manual_seed(0)",
            "diameter": 30, "repeats": a.repeats, "check": check,
            "gpuseg_cold_s": round(cold, 3) if cold else None,
            "gpuseg_cold_peak_rss_mib": round(cold_peak, 1) if cold_peak else None,
            "cellpose_first_s": round(cp_first, 3) if cp_first else None,
            "cellpose_warmup": not a.no_cli_warmup,
            "gpuseg_warm_s": {"median": round(gm, 3), "min": round(min(g_t), 3),
                              "max": round(max(g_t), 3)},
            "cellpose_cli_s": {"median": round(cm, 3), "min": round(min(c_t), 3),
                               "max": round(max(c_t), 3)},
            "gpuseg_peak_rss_mib": round(max(g_rss), 1),
            "cellpose_peak_rss_mib": round(max(c_rss), 1),
            "ratio_gpuseg_over_cellpose": round(gm / cm, 3),
            "gpuseg_stages_first": splits[0], "gpuseg_stages_warm": splits[1:],
            "note": "gpuseg warm = program cache and convolution-choice table filled by the cold "
                    "run; cold = both empty and POCL_KERNEL_CACHE=0" if not a.no_cli_warmup else
                    "quick: no cold run; gpuseg's program cache was filled by the suite's earlier "
                    "parts and an untimed first run; the cellpose command's first run is timed; "
                    "cold start-up: bench_startup and bench_net's cold numbers"}


def cellpose_eval_child(image, model, out):
    """--cellpose-eval: what a user's script does: import, load the model, read, eval, save."""
    warnings.filterwarnings("ignore")
    import tifffile
    import torch  # noqa: F401

    m = common.bundled_cellpose_model(model)
    img = tifffile.imread(image)
    masks = m.eval(img, channels=[0, 0], diameter=m.diam_labels)[0]
    tifffile.imwrite(out, masks.astype(np.uint32 if masks.max() > 65535 else np.uint16))


def part_memory(a):
    work = a.work
    side = a.mem_side
    image = common.write_tiled(side, work)
    cache = os.path.join(work, "gpuseg-cache-bundled")
    os.makedirs(cache, exist_ok=True)
    env = dict(os.environ, GPUSEG_CACHE_DIR=cache)
    small = common.write_tiled(256, work)
    g_out, c_out = os.path.join(work, f"gpuseg_{side}.tif"), os.path.join(work, f"cp_{side}.tif")
    # untimed warm-up runs on both sizes first: they fill gpuseg's program cache and the
    # convolution choices for this model and these tile counts (a first run compiles kernels,
    # which costs compiler memory that a warm run does not have); then the 256^2 run gives each
    # program's fixed memory (runtime, kernels, model) apart from the per-pixel part
    for img in (small, image):
        subprocess.run(gpuseg_cmd(a.build, img, common.BUNDLED_MODEL, g_out, 0), env=env,
                       check=True, capture_output=True)
    _, g_small, rc, _, err = common.run_peak(
        gpuseg_cmd(a.build, small, common.BUNDLED_MODEL, g_out, 0), env=env)
    if rc:
        sys.exit(f"gpuseg segment failed: {err.strip()[-500:]}")
    _, c_small, rc, _, err = common.run_peak(
        [sys.executable, os.path.abspath(__file__), "--cellpose-eval", small, common.BUNDLED_MODEL,
         c_out])
    if rc:
        sys.exit(f"cellpose eval failed: {err.strip()[-500:]}")
    gw, gp, rc, _, err = common.run_peak(
        gpuseg_cmd(a.build, image, common.BUNDLED_MODEL, g_out, 0), env=env)
    if rc:
        sys.exit(f"gpuseg segment failed: {err.strip()[-500:]}")
    cw, cp, rc, _, err = common.run_peak(
        [sys.executable, os.path.abspath(__file__), "--cellpose-eval", image, common.BUNDLED_MODEL,
         c_out])
    if rc:
        sys.exit(f"cellpose eval failed: {err.strip()[-500:]}")
    ours, theirs = read_labels(g_out), read_labels(c_out)
    return {"part": "memory", "side": side, "megapixels": side * side / 1e6,
            "model": "models/nuclei_gpuseg_v2 (bundled), diameter = diam_labels",
            "check": {"n_masks_gpuseg": int(ours.max()), "n_masks_cellpose": int(theirs.max()),
                      "ap50": ap50(theirs, ours)},
            "gpuseg_peak_rss_mib": round(gp, 1), "cellpose_peak_rss_mib": round(cp, 1),
            "ratio_rss_gpuseg_over_cellpose": round(gp / cp, 3),
            "gpuseg_peak_rss_256_mib": round(g_small, 1), "cellpose_peak_rss_256_mib":
                round(c_small, 1),
            "gpuseg_bytes_per_pixel_above_256": round((gp - g_small) * 2**20 / (side * side
                                                                                 - 65536), 1),
            "cellpose_bytes_per_pixel_above_256": round((cp - c_small) * 2**20 / (side * side
                                                                                   - 65536), 1),
            "gpuseg_wall_s": round(gw, 3), "cellpose_eval_wall_s": round(cw, 3),
            "ratio_wall_gpuseg_over_cellpose": round(gw / cw, 3),
            "note": "one measured run each after gpuseg's untimed warm-up runs; gpuseg = `gpuseg "
                    "segment` (warm program cache), Cellpose = python process: import, "
                    "CellposeModel with the bundled model, eval, save; peak = GNU time's %M "
                    "(max RSS of the process; child processes such as savers are not added)"}


def part_permp(a):
    work = a.work
    sides = [int(s) for s in a.sides.split(",")]
    images = [common.write_tiled(s, work) for s in sides]
    cache = os.path.join(work, "gpuseg-cache-bundled")
    os.makedirs(cache, exist_ok=True)
    save = os.path.join(work, "bench_segment_labels")
    os.makedirs(save, exist_ok=True)
    env = dict(os.environ, GPUSEG_CACHE_DIR=cache, GPUSEG_PROFILE="1")
    r = subprocess.run([os.path.join(a.build, "bench", "bench_segment"), common.BUNDLED_MODEL,
                        *images, "--repeats", str(a.permp_repeats), "--save", save], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"bench_segment failed: {r.stderr.strip()[-500:]}")
    res = json.loads(r.stdout)
    res["part"] = "permp"
    res["note"] = ("library call gpuseg_segment in one process (start-up excluded), bundled "
                   "model, diameter 0 (diam_labels), profiling events on")
    if 1024 in sides:  # correctness and Cellpose's warm in-process time on the 1 MP image
        import tifffile

        warnings.filterwarnings("ignore")
        m = common.bundled_cellpose_model()
        img = tifffile.imread(images[sides.index(1024)])
        m.eval(img, channels=[0, 0], diameter=m.diam_labels)  # warm-up
        times = []
        for _ in range(a.permp_repeats):
            t0 = time.perf_counter()
            masks = m.eval(img, channels=[0, 0], diameter=m.diam_labels)[0]
            times.append(time.perf_counter() - t0)
        ours = np.load(os.path.join(save, f"{sides.index(1024)}.npy"))
        res["cellpose_1024"] = {
            "eval_median_s": round(statistics.median(times), 3),
            "n_masks": int(masks.max()), "ap50_vs_gpuseg": ap50(masks, ours),
            "identical_pixels": float((masks == ours).mean())}
    return res


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--cellpose-eval":
        return cellpose_eval_child(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(common.ROOT, "build-bench"))
    ap.add_argument("--work", help="folder for images, models and outputs (default: temporary)")
    ap.add_argument("--parts", default="cli,memory,permp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sides", default="512,1024,2048")
    ap.add_argument("--permp-repeats", type=int, default=3)
    ap.add_argument("--mem-side", type=int, default=4096)
    ap.add_argument("--no-cli-warmup", action="store_true",
                    help="cli (quick): a warm untimed gpuseg run instead of the cold one, and "
                         "no untimed cellpose run (its first run is timed and is the reference)")
    a = ap.parse_args()
    tmp = None
    if not a.work:
        tmp = tempfile.mkdtemp(prefix="gpuseg-e2e-")
        a.work = tmp
    os.makedirs(a.work, exist_ok=True)
    try:
        for part in a.parts.split(","):
            res = {"cli": part_cli, "memory": part_memory, "permp": part_permp}[part](a)
            res["loadavg_after"] = common.loadavg()
            print(json.dumps(res), flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
