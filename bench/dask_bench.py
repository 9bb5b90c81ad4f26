"""bench/dask_bench.py: gpuseg on Dask (issue #17) on this machine.

Part `files`: images per hour of gpuseg.distributed.segment_files over a folder of many small
real images (dsb2018 train, their own sizes), on a LocalCluster of 1 and then 2 worker processes
(1 thread each; a fresh cluster per setting, warmed up on 2 images first).

Part `zarr`: one SIDE x SIDE image (a real dsb2018 field mirror-tiled, bench/common.tiled_image)
stored as zarr, segmented block by block on a LocalCluster of 2 worker processes (1 thread each)
by gpuseg.distributed.segment_zarr and by Cellpose 3.1's contrib/distributed_segmentation.py
(distributed_eval), with the same block size and the same context around each block (gpuseg's
halo = Cellpose's overlap = 2 x diameter), the same model (the bundled nuclei_gpuseg_v2; Cellpose
runs it through bench/common.bundled_cellpose_model, patched in the workers in place of
CellposeModel(**model_kwargs), one torch thread per worker) and diameter. A fresh cluster per
method. Reported: wall time of the call, CPU time (user + sys) of the worker processes, each
worker's peak RSS (its high-water mark, VmHWM), and masks cut at block seams.

Masks cut at block seams, defined: the reference is the same program's whole-image run (gpuseg:
`gpuseg segment` on the whole image; Cellpose: CellposeModel.eval of the whole image). A mask M of
the reference *crosses a seam* when its pixels lie in two block columns or two block rows (seams
are the lines x = k*BLOCK, y = k*BLOCK, the borders of the blocks' cores, which are the same grid
for both programs). Let L be the blockwise label covering most of M's pixels (0 included). M is
*split* when L is 0 or covers less than 90% of M (M was cut into pieces, truncated or lost),
*merged* when L covers at least 90% of M but less than 90% of L lies in M (M was joined to a
neighbour); *cut at seams* counts the crossing masks that are split or merged. The same test over the
masks that do not cross a seam gives the background rate of disagreement that has nothing to do
with seams.

Python is for benchmarks only. Run with /work/venv/bin/python (Cellpose 3.1.1.3, dask, zarr 2);
the gpuseg package comes from python/src with the Release library of the package build
(build/python-venv, made by tools/test_python.sh) unless --lib says otherwise. The convolution is
pinned (GPUSEG_CONV=winograd) so that the blockwise and whole-image runs use the same kernels.
"""
import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import common  # noqa: E402


def setup_env(lib):
    os.environ["GPUSEG_LIBRARY"] = lib
    os.environ["GPUSEG_MODEL"] = common.BUNDLED_MODEL
    os.environ["GPUSEG_CONV"] = "winograd"
    os.environ.setdefault("GPUSEG_CACHE_DIR", os.path.join(ROOT, "build", "program-cache"))
    paths = [os.path.join(ROOT, "python", "src"), HERE]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])
    for p in paths:
        sys.path.insert(0, p)


def cluster(n):
    from distributed import Client, LocalCluster

    c = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                     memory_limit="8GB")
    return c, Client(c)


def worker_usage():
    """CPU time of this process (all its threads: PoCL's, torch's) and its peak RSS: VmHWM of
    /proc/self/status, which starts afresh at exec (ru_maxrss would carry the high-water mark of
    the process that forked it)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024.0
    return {"cpu_s": r.ru_utime + r.ru_stime, "peak_mib": peak}


def usage(client):
    return client.run(worker_usage)


def cpu_delta(before, after):
    return round(sum(after[w]["cpu_s"] - before.get(w, {"cpu_s": 0})["cpu_s"] for w in after), 1)


def peaks(after):
    return sorted(round(u["peak_mib"]) for u in after.values())


# ---- part files -------------------------------------------------------------------------------

def part_files(a):
    import gpuseg.distributed as gd

    imgs = sorted(glob.glob(os.path.join(common.DATA, "dsb2018", "train", "images", "*.png")))
    if len(imgs) < a.files + 2:
        raise SystemExit(f"dsb2018 train: {len(imgs)} images, need {a.files + 2}")
    warm, imgs = imgs[:2], imgs[2:2 + a.files]
    mp = 0.0
    from PIL import Image

    for p in imgs:
        with Image.open(p) as im:
            mp += im.size[0] * im.size[1] / 1e6
    out = {"n_images": len(imgs), "megapixels": round(mp, 2), "runs": []}
    for n in (1, 2):
        c, client = cluster(n)
        try:
            od = os.path.join(a.work, f"files_out_{n}")
            shutil.rmtree(od, ignore_errors=True)
            gd.segment_files(warm, client=client, out_dir=od, diameter=a.diameter)
            u0 = usage(client)
            la = common.loadavg()
            t0 = time.perf_counter()
            infos = gd.segment_files(imgs, client=client, out_dir=od, diameter=a.diameter)
            wall = time.perf_counter() - t0
            u1 = usage(client)
            r = {"workers": n, "wall_s": round(wall, 1), "images_per_hour": round(3600 * len(imgs) / wall),
                 "workers_cpu_s": cpu_delta(u0, u1), "worker_peak_mib": peaks(u1),
                 "masks": int(sum(i["n_masks"] for i in infos)),
                 "tasks_per_worker": sorted(
                     [sum(1 for i in infos if i["worker"] == w) for w in u1]),
                 "loadavg_start": la, "loadavg_end": common.loadavg()}
            print(json.dumps(r), flush=True)
            out["runs"].append(r)
        finally:
            client.close()
            c.close()
    return out


# ---- part zarr --------------------------------------------------------------------------------

def seam_stats(ref, got, block, frac=0.9):
    """Masks of ref crossing a block seam / not crossing one, and how many of each are not found
    in one piece in got (module docstring)."""
    H, W = ref.shape
    r = ref.ravel().astype(np.int64)
    g = got.ravel().astype(np.int64)
    fg = np.nonzero(r)[0]
    m, b = r[fg], g[fg]
    ys, xs = fg // W, fg % W
    n = int(r.max())
    cross = np.zeros(n + 1, bool)
    for coord in (xs // block, ys // block):
        lo = np.full(n + 1, np.iinfo(np.int64).max)
        hi = np.full(n + 1, -1)
        np.minimum.at(lo, m, coord)
        np.maximum.at(hi, m, coord)
        cross |= hi > lo
    size = np.bincount(m, minlength=n + 1)
    # the got label covering most of each ref mask (ties: smallest label)
    nb = int(g.max()) + 1
    key, cnt = np.unique(m * nb + b, return_counts=True)
    km, kb = key // nb, key % nb
    order = np.lexsort((kb, -cnt, km))
    km, kb, cnt = km[order], kb[order], cnt[order]
    first = np.r_[True, km[1:] != km[:-1]]
    best = np.zeros(n + 1, np.int64)
    best_cnt = np.zeros(n + 1, np.int64)
    best[km[first]] = kb[first]
    best_cnt[km[first]] = cnt[first]
    gsize = np.bincount(g, minlength=nb)
    split = (best == 0) | (best_cnt < frac * np.maximum(size, 1))  # split, truncated or lost
    merged = ~split & (best_cnt < frac * gsize[best])  # one piece, but inside a larger mask
    bad = split | merged
    present = size > 0
    present[0] = False
    c, nc = present & cross, present & ~cross
    return {"masks_ref": int(present.sum()),
            "masks_blockwise": int(len(np.unique(g)) - (g.min() == 0)),
            "crossing_seams": int(c.sum()), "cut_at_seams": int((c & bad).sum()),
            "split_at_seams": int((c & split).sum()), "merged_at_seams": int((c & merged).sum()),
            "not_crossing": int(nc.sum()), "not_crossing_disagreeing": int((nc & bad).sum())}


def cellpose_patch():
    """In each Cellpose worker: the bundled model in place of CellposeModel(**kw) (built per
    block, as distributed_eval does), 2-D eval of the (1, h, w) block, one torch thread."""
    import cellpose.models as cm
    import torch

    import common as cmn

    torch.set_num_threads(1)
    orig = getattr(cm, "_gpuseg_bench_orig", cm.CellposeModel)
    cm._gpuseg_bench_orig = orig

    def make(**kw):
        cm.CellposeModel = orig
        try:
            model = cmn.bundled_cellpose_model()
        finally:
            cm.CellposeModel = make
        ev = model.eval

        def eval_plane(x, **kw):
            res = ev(x[0], **kw)
            return (res[0][None],) + tuple(res[1:])

        model.eval = eval_plane
        return model

    cm.CellposeModel = make
    return True


def part_zarr(a):
    import zarr

    import gpuseg.distributed as gd

    side, block, d = a.side, a.block, a.diameter
    halo = 2 * d  # Cellpose's overlap
    img = common.tiled_image(side)
    zin = os.path.join(a.work, f"in_{side}.zarr")
    zin3 = os.path.join(a.work, f"in3_{side}.zarr")
    if not os.path.exists(zin):
        z = zarr.open_array(store=zin, mode="w", shape=img.shape, chunks=(block, block),
                            dtype=img.dtype)
        z[...] = img
        z3 = zarr.open_array(store=zin3, mode="w", shape=(1,) + img.shape,
                             chunks=(1, block, block), dtype=img.dtype)
        z3[...] = img[None]
    npy = os.path.join(a.work, f"in_{side}.npy")
    np.save(npy, img)
    out = {"side": side, "block": block, "diameter": d, "context": halo}

    # gpuseg: the whole-image reference (the package's command, same library build)
    cli = os.path.join(os.path.dirname(os.path.dirname(a.lib)), "bin", "gpuseg")
    ref_g = os.path.join(a.work, f"gpuseg_whole_{side}.npy")
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, peak, rc, _, err = common.run_peak(
        [cli, "segment", npy, "--diameter", str(d), "-o", ref_g, "--quiet"])
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc:
        raise SystemExit(f"gpuseg whole: {err}")
    out["gpuseg_whole"] = {"wall_s": round(wall, 1), "peak_mib": round(peak), "cpu_s": round(
        c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 1)}
    print(json.dumps(out["gpuseg_whole"]), flush=True)

    # gpuseg segment_zarr
    c, client = cluster(2)
    try:
        wz = os.path.join(a.work, "warm.zarr")
        wo = os.path.join(a.work, "warm_out.zarr")
        for p in (wz, wo):
            shutil.rmtree(p, ignore_errors=True)
        w = zarr.open_array(store=wz, mode="w", shape=(256, 256), chunks=(128, 128),
                            dtype=img.dtype)
        w[...] = img[:256, :256]
        gd.segment_zarr(wz, wo, block_size=128, halo=halo, diameter=d, client=client)
        zo = os.path.join(a.work, f"gpuseg_dist_{side}.zarr")
        shutil.rmtree(zo, ignore_errors=True)
        u0 = usage(client)
        la = common.loadavg()
        t0 = time.perf_counter()
        info = gd.segment_zarr(zin, zo, block_size=block, halo=halo, diameter=d,
                               client=client)
        wall = time.perf_counter() - t0
        u1 = usage(client)
    finally:
        client.close()
        c.close()
    lab_g = np.asarray(zarr.open_array(store=zo, mode="r")[...])
    whole_g = np.load(ref_g)
    r = {"wall_s": round(wall, 1), "workers_cpu_s": cpu_delta(u0, u1),
         "worker_peak_mib": peaks(u1), "n_masks": info["n_masks"],
         "n_too_big": info["n_too_big"], "n_tiles_run": info["n_tiles_run"],
         "n_tiles_whole": info["n_tiles"], "seconds": {k: round(v, 1) for k, v in
                                                       info["seconds"].items()},
         "identical_to_whole": bool(np.array_equal(lab_g, whole_g)),
         "seams": seam_stats(whole_g, lab_g, block),
         "loadavg_start": la, "loadavg_end": common.loadavg()}
    out["gpuseg_dist"] = r
    print(json.dumps(r), flush=True)
    if a.skip_cellpose:
        return out

    # Cellpose: the whole-image reference, in this process (one torch thread per worker below;
    # here torch's default)
    import torch

    model = common.bundled_cellpose_model()
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    whole_c = model.eval(img, diameter=d, channels=[0, 0])[0].astype(np.uint32)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cellpose_whole"] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(
        s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime, 1),
        "torch_threads": torch.get_num_threads()}
    print(json.dumps(out["cellpose_whole"]), flush=True)

    from cellpose.contrib import distributed_segmentation as ds

    c, client = cluster(2)
    cwd = os.getcwd()
    os.chdir(a.work)  # distributed_eval writes its worker logs and temporaries in the cwd
    try:
        c.client = client  # distributed_eval calls cluster.client.map
        client.run(cellpose_patch)
        z3 = zarr.open(zin3, mode="r")
        zo = os.path.join(a.work, f"cellpose_dist_{side}.zarr")
        shutil.rmtree(zo, ignore_errors=True)
        u0 = usage(client)
        la = common.loadavg()
        t0 = time.perf_counter()
        seg, boxes = ds.distributed_eval(
            input_zarr=z3, blocksize=(1, block, block), write_path=zo,
            model_kwargs={"gpu": False}, eval_kwargs={"diameter": d, "channels": [0, 0]},
            cluster=c)
        wall = time.perf_counter() - t0
        u1 = usage(client)
        lab_c = np.asarray(seg[0])
    finally:
        os.chdir(cwd)
        client.close()
        c.close()
    r = {"wall_s": round(wall, 1), "workers_cpu_s": cpu_delta(u0, u1),
         "worker_peak_mib": peaks(u1), "n_masks": int(len(np.unique(lab_c)) - 1),
         "seams": seam_stats(whole_c, lab_c, block),
         "loadavg_start": la, "loadavg_end": common.loadavg()}
    out["cellpose_dist"] = r
    print(json.dumps(r), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="scratch folder (images, outputs)")
    ap.add_argument("--out", default=None, help="write the JSON results here")
    ap.add_argument("--parts", default="files,zarr")
    ap.add_argument("--files", type=int, default=100, help="images in part files")
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--diameter", type=int, default=23)
    ap.add_argument("--skip-cellpose", action="store_true")
    ap.add_argument("--lib", default=os.path.join(
        ROOT, "build", "python-venv", "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
        "site-packages", "gpuseg", "lib", "libgpuseg.so"))
    a = ap.parse_args()
    if not os.path.exists(a.lib):
        raise SystemExit(f"{a.lib}: no library (run tools/test_python.sh, or give --lib)")
    os.makedirs(a.work, exist_ok=True)
    setup_env(a.lib)
    res = {"machine": common.cpu_model(), "cores": os.cpu_count(), "git": common.git_describe(),
           "versions": common.versions(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                    time.gmtime())}
    for part in a.parts.split(","):
        res[part] = {"files": part_files, "zarr": part_zarr}[part](a)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
