#!/usr/bin/env python3
"""bench/gpu_vs_cellpose.py: gpuseg on a GPU (OpenCL) against Cellpose 3.1 on the same GPU
(PyTorch CUDA), same inputs, same model files, one script. For a lent GPU machine, where the
run is short: every part appends one JSON line to OUT/gpu.jsonl as soon as it is measured, so a
run cut short keeps what it measured; bench/gpu_report.py turns the lines into report.md.

Parts (each: gpuseg's cold run apart, warm-up, then the median of REPEATS; correctness before
time):
  info     nvidia-smi, the OpenCL device gpuseg picked, versions
  tune     bench_tune: the implicit GEMM's tuner on every convolution shape of the full-width
           CPnet and of each model given (224^2 tiles, batches of 8), its sets kept in gpuseg's
           cache (so the parts after it run tuned), and per shape the tuned GEMM, direct,
           Winograd and CLBlast timed: GFLOP/s per layer shape (gpu_report.py sets them against
           the device's fp32 peak); OUT/conv_params.c: the lines for src/ops/conv_params.c
  net      CPnet forward, full-width random weights (common.full_width_net(0)), on the 224^2
           tiles of mirror-tiled real images (common.tiled_image) of 512^2..2048^2, cut as
           Cellpose's run_net does; bench_net under each --net-variants (auto: gpuseg's choice
           per layer shape; gemm, direct, clblast, winograd: forced; band: direct in the CPU
           layout) vs the same CPnet on CUDA in batches of 8 (with PyTorch's default TF32
           convolutions and with them off); max abs difference / range; a per-layer profile of
           the first variant on the largest image
  masks    flows -> masks (QC on, niter 200) on the dsb313 fixture's flows tiled to 512^2..2048^2:
           bench_masks vs dynamics.resize_and_compute_masks(device=cuda); AP of the labels
  segment  the whole pipeline in one process (start-up excluded): bench_segment vs
           CellposeModel(gpu=True).eval on tiled images 512^2..4096^2, for each model given
           (--models name=path,...; narrow ones run in Cellpose through common's style-padded
           net), diameter = the model's diam_labels on both sides; AP50 gpuseg vs Cellpose
  cli      `gpuseg segment` vs `python -m cellpose --use_gpu` on a 2048^2 image, wall time with
           start-up, warm program cache (gpuseg) and warm file caches (both), REPEATS each

    python3 bench/gpu_vs_cellpose.py --build BUILD --out DIR [--parts info,net,masks,segment,cli]
        [--models full=PATH,bundled=models/nuclei_gpuseg_v2] [--repeats 5] [--deadline EPOCH_S]
        [--net-variants auto,gemm,direct] [--net-sides 2048] [--segment-sides 1024,2048]
    A model path `random` is the full-width random-weight CPnet (no trained full-width model
    needed: the network's time is the same; its masks are not meaningful).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

warnings.filterwarnings("ignore")
FIX_MASKS = os.path.join(common.ROOT, "tests", "fixtures", "masks")


DEV = "cuda"  # --torch-device; cpu only to try the script on a machine without a GPU
SIDES = {"net": (512, 1024, 2048), "masks": (512, 1024, 2048), "segment": (512, 1024, 2048, 4096),
         "cli": 2048}
SMOKE = {"net": (256,), "masks": (512,), "segment": (256, 512), "cli": 512}


def sync():
    import torch

    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats):
    fn()  # warm-up
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), out


def ap50(a, b):
    from cellpose import metrics

    if not a.max() or not b.max():
        return None
    return float(metrics.average_precision([a.astype(np.int32)], [b.astype(np.int32)],
                                           threshold=[0.5])[0][0][0])


def run_json(cmd, env=None, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed ({r.returncode}): "
                           f"{r.stderr.strip()[-800:]}")
    return json.loads(r.stdout)


def part_info(a, tmp):
    import torch
    from importlib.metadata import version

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                              "clocks.max.sm", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip()
    except OSError as e:
        smi = f"no nvidia-smi ({e.strerror})"
    dev = subprocess.run([os.path.join(a.build, "gpuseg"), "devices"], capture_output=True,
                         text=True)
    return {"nvidia_smi": smi, "gpuseg_devices": dev.stdout.strip()[-2000:],
            "gpuseg_devices_rc": dev.returncode, "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "torch_device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu",
            "cellpose": version("cellpose"), "numpy": np.__version__,
            "commit": common.git_describe(), "cpu": common.cpu_model(),
            "nproc": os.cpu_count()}


def tiles_of(side):
    from cellpose import transforms

    img = common.tiled_image(side)
    x = transforms.normalize_img(transforms.convert_image(img, [0, 0], nchan=2)).transpose(2, 0, 1)
    ypad1, ypad2, xpad1, xpad2 = transforms.get_pad_yx(side, side)
    x = np.pad(x, ((0, 0), (ypad1, ypad2), (xpad1, xpad2)))
    t = transforms.make_tiles(x, bsize=224, augment=False, tile_overlap=0.1)[0]
    return np.ascontiguousarray(t.reshape(-1, 2, 224, 224).astype(np.float32))


def part_net(a, tmp):
    import torch

    net = common.full_width_net(0)
    model = os.path.join(tmp, "full_random.pth")
    net.save_model(model)
    net = net.to(DEV).eval()
    rows = []
    for side in SIDES["net"]:
        tiles = tiles_of(side)
        tin, tout = os.path.join(tmp, "tiles.npy"), os.path.join(tmp, "out.npy")
        np.save(tin, tiles)
        # each variant: AUTO (the default), or one implementation forced (docs/ops.md); the
        # first variant also gives the per-layer profile on the largest image
        runs, outs = {}, {}
        for i, var in enumerate(a.net_variants):
            env = dict(os.environ)
            env.pop("GPUSEG_CONV", None)
            if var == "band":
                env.update(GPUSEG_CONV="direct", GPUSEG_CONV_LAYOUT="band")
            elif var != "auto":
                env["GPUSEG_CONV"] = var
            if i == 0 and side == SIDES["net"][-1]:
                env["BENCH_NET_PROFILE"] = "1"
            runs[var] = run_json([os.path.join(a.build, "bench", "bench_net"), model, tin, tout,
                                  str(a.repeats)], env=env, timeout=400)
            outs[var] = np.load(tout)
        g = runs[a.net_variants[0]]
        got = outs[a.net_variants[0]]
        X = torch.from_numpy(tiles).to(DEV)

        def fwd():
            with torch.no_grad():
                return torch.cat([net(X[i:i + 8])[0] for i in range(0, len(X), 8)])

        row = {"size": side, "tiles": len(tiles), "gpuseg_device": g["device"],
               "variant": a.net_variants[0], "gpuseg_cold_s": g["cold_s"],
               "gpuseg_median_s": g["median_s"], "conv_choices": g.get("conv_choices"),
               "profile": g.get("profile"), "profile_total_s": g.get("profile_total_s"),
               "variants": {v: {"median_s": r["median_s"], "cold_s": r["cold_s"],
                                "conv_choices": r.get("conv_choices")}
                            for v, r in runs.items()}}
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            med, mn, out = timed(fwd, a.repeats)
            out = out.cpu().numpy()
            err = float(np.abs(got - out).max())
            key = "torch_tf32" if tf32 else "torch_fp32"
            row[key + "_median_s"] = round(med, 5)
            row[key + "_err_over_range"] = err / float(out.max() - out.min())
            if not tf32:
                for v, o in outs.items():
                    row["variants"][v]["err_over_range_fp32"] = (
                        float(np.abs(o - out).max()) / float(out.max() - out.min()))
        torch.backends.cudnn.allow_tf32 = True
        row["ratio_gpuseg_over_torch_fp32"] = round(g["median_s"] / row["torch_fp32_median_s"], 3)
        row["ratio_gpuseg_over_torch_tf32"] = round(g["median_s"] / row["torch_tf32_median_s"], 3)
        for v in row["variants"].values():
            v["ratio_over_torch_fp32"] = round(v["median_s"] / row["torch_fp32_median_s"], 3)
            v["ratio_over_torch_tf32"] = round(v["median_s"] / row["torch_tf32_median_s"], 3)
        rows.append(row)
        emit(a, {"part": "net", "partial": True, "row": row})
    return {"model": "full-width random CPnet [2,32,64,128,256], torch.manual_seed(0)",
            "batch": 8, "repeats": a.repeats, "results": rows}


def part_tune(a, tmp):
    side, batch = (32, 1) if a.smoke else (224, 8)
    nbases = [common.FULL_NBASE]
    for _, path in a.models:
        nb = common.nbase_of(path)
        if nb not in nbases:
            nbases.append(nb)
    cmd = [os.path.join(a.build, "bench", "bench_tune"), "--tile", str(side), "--batch",
           str(batch), "--repeats", str(max(3, a.repeats)), "--emit-c",
           os.path.join(a.out, "conv_params.c")]
    for nb in nbases:
        cmd += ["--nbase", ",".join(str(int(x)) for x in nb)]
    r = run_json(cmd, timeout=400)
    r["nbases"] = nbases
    return r


def part_masks(a, tmp):
    import torch
    from cellpose import dynamics, metrics

    flows = np.load(os.path.join(FIX_MASKS, "dsb313_flows.npy"))
    rows = []
    for side in SIDES["masks"]:
        g = run_json([os.path.join(a.build, "bench", "bench_masks"), FIX_MASKS, str(a.repeats),
                      "--save", tmp, "--side", str(side)])
        e = g["sizes"][0]
        H, W = flows.shape[1:]
        big = np.tile(flows, (1, -(-side // H), -(-side // W)))[:, :side, :side].copy()

        def cp():
            return dynamics.resize_and_compute_masks(
                big[:2].copy(), big[2].copy(), niter=200, cellprob_threshold=0.0,
                flow_threshold=0.4, interp=True, min_size=15, max_size_fraction=0.4,
                device=torch.device(DEV))

        med, mn, masks = timed(cp, a.repeats)
        ours = np.load(os.path.join(tmp, f"gpuseg_{side}.npy"))
        ap = metrics.average_precision([masks.astype(np.int32)], [ours.astype(np.int32)],
                                       threshold=[0.5, 0.9])[0][0]
        rows.append({"side": side, "n_masks_cellpose": int(masks.max()),
                     "n_masks_gpuseg": int(ours.max()), "ap50": float(ap[0]),
                     "ap90": float(ap[1]), "identical_pixels": float((masks == ours).mean()),
                     "cellpose_s": round(med, 4),
                     "gpuseg_host_api_s": e["host_api_s"]["median"],
                     "gpuseg_device_api_s": e["device_api_s"]["median"],
                     "speedup_host_api": round(med / e["host_api_s"]["median"], 2)})
    return {"device": g["device"], "repeats": a.repeats, "sizes": rows}


def cellpose_model_for(path):
    """CellposeModel on CUDA running PATH: a full-width file directly, a narrower one through
    common's style-padded net (moved to the GPU)."""
    import torch
    from cellpose import models

    if common.nbase_of(path) == common.FULL_NBASE:
        return models.CellposeModel(gpu=DEV == "cuda", pretrained_model=path)
    m = common.bundled_cellpose_model(path)
    dev = torch.device(DEV)
    m.net = m.net.to(dev)  # CPnet.device is a property: its parameters' device
    m.device, m.gpu = dev, DEV == "cuda"
    return m


def part_segment(a, tmp):
    import tifffile

    sides = list(SIDES["segment"])
    images = [common.write_tiled(s, tmp) for s in sides]
    out = []
    for name, path in a.models:
        save = os.path.join(tmp, f"labels_{name}")
        os.makedirs(save, exist_ok=True)
        g = run_json([os.path.join(a.build, "bench", "bench_segment"), path, *images,
                      "--repeats", str(a.repeats), "--save", save], timeout=400)
        m = cellpose_model_for(path)
        rows = []
        for i, side in enumerate(sides):
            img = tifffile.imread(images[i])
            med, mn, res = timed(lambda: m.eval(img, channels=[0, 0], diameter=m.diam_labels)[0],
                                 max(2, a.repeats // 2))
            ours = np.load(os.path.join(save, f"{i}.npy"))
            gi = g["images"][i]
            rows.append({"side": side, "megapixels": gi["megapixels"], "tiles": gi["n_tiles"],
                         "gpuseg_first_s": gi["first_s"], "gpuseg_median_s": gi["median_s"],
                         "gpuseg_net_s": gi["net_median_s"], "gpuseg_masks_s": gi["masks_median_s"],
                         "gpuseg_s_per_mp": gi["median_s_per_mp"],
                         "cellpose_eval_median_s": round(med, 4),
                         "ratio_gpuseg_over_cellpose": round(gi["median_s"] / med, 3),
                         "n_masks_gpuseg": gi["n_masks"], "n_masks_cellpose": int(res.max()),
                         "ap50_vs_cellpose": ap50(res, ours)})
            emit(a, {"part": "segment", "partial": True, "model": name, "row": rows[-1]})
        # one more pass (the second-largest image, 2048^2 by default) with profiling events on:
        # where the time goes
        prof = run_json([os.path.join(a.build, "bench", "bench_segment"), path,
                         images[-2] if len(images) > 1 else images[-1],
                         "--repeats", "3"], env=dict(os.environ, GPUSEG_PROFILE="1"))
        pi = prof["images"][0]
        out.append({"model": name, "path": os.path.relpath(path, common.ROOT),
                    "diam_labels": float(m.diam_labels), "startup_s": g["startup_s"], "sizes": rows,
                    "profile_second_largest": {"kernel_total_s_per_run": pi.get("kernel_total_s_per_run"),
                                     "median_s": pi["median_s"],
                                     "kernels": (pi.get("kernels") or [])[:15]}})
        del m
    return {"models": out, "repeats": a.repeats,
            "note": "library gpuseg_segment in one process (start-up excluded), host image in "
                    "and labels out; Cellpose: CellposeModel(gpu=True).eval, channels [0,0], "
                    "diameter = diam_labels on both sides"}


def part_cli(a, tmp):
    side = SIDES["cli"]
    image = common.write_tiled(side, tmp)
    # the cellpose command builds CPnet at full width: the first full-width model given, else
    # the random one (which finds no masks: a timing of the network and start-up only)
    full = [(n, p) for n, p in a.models if common.nbase_of(p) == common.FULL_NBASE]
    name, model = full[0] if full else ("full_random", os.path.join(tmp, "full_random.pth"))
    if not os.path.exists(model):
        common.save_full_width_model(model)
    g_out = os.path.join(tmp, "g.tif")
    cp_dir = os.path.join(tmp, "cp")
    os.makedirs(cp_dir, exist_ok=True)
    # diameter 30 on both sides: the cellpose command's default (in 2026-11's H200 run gpuseg ran
    # at the model's diam_labels instead, a different scale: its AP50 0.932 came from that)
    g_cmd = [os.path.join(a.build, "gpuseg"), "segment", image, "--model", model, "--diameter",
             "30", "-o", g_out, "--quiet"]
    cp_cmd = [sys.executable, "-m", "cellpose", "--image_path", image, "--pretrained_model",
              model, "--diameter", "30", "--save_tif", "--no_npy", "--savedir", cp_dir] + (
                  ["--use_gpu"] if DEV == "cuda" else [])

    def wall(cmd):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr.strip()[-500:]}")
        return time.perf_counter() - t0

    first_g, first_c = wall(g_cmd), wall(cp_cmd)
    import tifffile

    ours = np.asarray(tifffile.imread(g_out))
    theirs = np.asarray(tifffile.imread(os.path.join(cp_dir, f"tiled_{side}_cp_masks.tif")))
    g_t, c_t = [], []
    for _ in range(3):
        g_t.append(wall(g_cmd))
        c_t.append(wall(cp_cmd))
    gm, cm = statistics.median(g_t), statistics.median(c_t)
    return {"side": side, "model": name, "gpuseg_first_s": round(first_g, 3),
            "cellpose_first_s": round(first_c, 3), "gpuseg_warm_median_s": round(gm, 3),
            "cellpose_cli_median_s": round(cm, 3), "ratio_gpuseg_over_cellpose": round(gm / cm, 3),
            "n_masks_gpuseg": int(ours.max()), "n_masks_cellpose": int(theirs.max()),
            "ap50": ap50(theirs, ours)}


PARTS = {"info": part_info, "tune": part_tune, "net": part_net, "masks": part_masks,
         "segment": part_segment, "cli": part_cli}


def emit(a, obj):
    obj["t"] = round(time.time() - a.t0, 1)
    line = json.dumps(obj, default=lambda x: x.item() if hasattr(x, "item") else str(x))
    with open(os.path.join(a.out, "gpu.jsonl"), "a") as f:
        f.write(line + "\n")
    print(line[:400], flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="info,net,masks,segment,cli")
    ap.add_argument("--models", default="bundled=" + common.BUNDLED_MODEL)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true", help="small sizes: to try the script")
    ap.add_argument("--deadline", type=float, default=None,
                    help="epoch seconds after which no further part starts")
    ap.add_argument("--net-variants", default="auto,gemm,direct",
                    help="bench_net runs: auto, gemm, direct, clblast, winograd, band")
    ap.add_argument("--net-sides", default=None, help="image sides of the net part (e.g. 2048)")
    ap.add_argument("--segment-sides", default=None, help="image sides of the segment part")
    a = ap.parse_args()
    a.net_variants = [v for v in a.net_variants.split(",") if v]
    a.t0 = time.time()
    global DEV
    DEV = a.torch_device
    if a.smoke:
        SIDES.update(SMOKE)
    if a.net_sides:
        SIDES["net"] = tuple(int(x) for x in a.net_sides.split(","))
    if a.segment_sides:
        SIDES["segment"] = tuple(int(x) for x in a.segment_sides.split(","))
    a.models = [tuple(x.split("=", 1)) for x in a.models.split(",") if x]
    a.models = [(n, p) for n, p in a.models if p == "random" or os.path.exists(p)]
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (n, p) in enumerate(a.models):
            if p == "random":  # the full-width random CPnet (torch.manual_seed(0))
                a.models[i] = (n, os.path.join(tmp, "full_random.pth"))
                common.save_full_width_model(a.models[i][1])
        for part in a.parts.split(","):
            if a.deadline and time.time() > a.deadline:
                emit(a, {"part": part, "skipped": "deadline"})
                continue
            try:
                t0 = time.time()
                res = PARTS[part](a, tmp)
                emit(a, {"part": part, "seconds": round(time.time() - t0, 1), "result": res})
            except Exception as e:  # noqa: BLE001 - a failed part is reported, the next runs
                emit(a, {"part": part, "error": f"{type(e).__name__}: {e}",
                         "trace": traceback.format_exc()[-1500:]})


if __name__ == "__main__":
    main()
