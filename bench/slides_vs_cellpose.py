#!/usr/bin/env python3
"""bench/slides_vs_cellpose.py: whole-slide images in bounded memory (issue #16), gpuseg's
blockwise `gpuseg segment` measured beside the whole-image run and beside Cellpose 3.1's
contrib/distributed_segmentation.py, in one script. Images are mirror-tiled from a real dsb2018
fluorescence field (common.TILE_SOURCE, 520x696, ~313 nuclei) and written as tiled BigTIFFs
(512² tiles, uint8) from a tile generator, so that no image is ever whole in memory here.
The model is the bundled one (models/nuclei_gpuseg_v2) at its own diameter (--diameter model on
gpuseg's side, diameter=diam_labels on Cellpose's), so that no diameter estimation differs.
Each part prints one JSON line.

  equal    blockwise (--block-size B) against whole-image `gpuseg segment` on SIDE² images
           (default 4096 and 8192): wall, CPU (user+sys) and peak RSS (GNU time) of each, the
           masks whose pixel sets differ (matched by exact pixel set, i.e. equal up to
           renumbering), which of those are bigger than the halo (bounding box side > halo),
           and AP at IoU 0.5 and 0.9 between the two (Cellpose's IoU matching, as `gpuseg eval`).
  slide    a W x H image (default 40000 x 25000, 1 Gpx) segmented by `gpuseg segment` with the
           defaults for large images (the image goes blockwise by itself, blocks of 1024) and
           the same command on a REF² image (default 4096, whole-image run); wall and CPU time
           per megapixel of both, peak RSS. The big run goes through `script` (a pseudo-terminal)
           so that its progress line (blocks done, MP/s, time left) is logged, and a sampler
           records its RSS and CPU time every 10 s into PROGRESS.jsonl.
  cellpose Cellpose's distributed_segmentation (dask LocalCluster, zarr input) against gpuseg's
           blockwise run on the same SIDE² image and block size, diameter 23 on both sides
           (distributed_eval slices with 2 x diameter, so it needs an integer): wall and CPU
           time, peak memory of all processes (sampled from /proc every 0.5 s over the whole
           process tree, and each process's high-water mark), and masks cut at block seams on
           each side (see seam_cuts). As shipped it fails on a 2-D image (its face merge labels
           with a 3-D structuring element), so the image goes in as a Z = 1 volume and each
           worker's model segments the (1, h, w) block as its plane (cellpose_child). Its four
           steps can run as separate processes (--cp-steps); a run without --cp-steps runs the
           missing ones and assembles the records.

    /work/venv/bin/python bench/slides_vs_cellpose.py --build build-bench --work DIR
        [--parts equal,slide,cellpose] [--sides 4096,8192] [--block 1024]
        [--slide 40000x25000] [--ref 4096] [--cp-side 8192]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TILE = 512
CLK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# images


def source_block():
    """The period of the mirror tiling: [[I, I flipped in x], [I flipped in y, I flipped both]]
    (common.tiled_image's block), so that any region of a huge tiled image is cut from it."""
    import cv2

    img = cv2.imread(common.TILE_SOURCE, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2).astype(np.uint8)
    return np.block([[img, img[:, ::-1]], [img[::-1], img[::-1, ::-1]]])


def write_slide(path, width, height):
    """A width x height uint8 tiled BigTIFF (TILE² tiles) of the mirror tiling, written tile by
    tile from a generator: the image is never whole in memory. Equal to common.tiled_image for
    a square image (same period, same origin)."""
    import tifffile

    if os.path.exists(path):
        return path
    blk = source_block()
    bh, bw = blk.shape

    def tiles():
        for y0 in range(0, height, TILE):
            rows = np.arange(y0, y0 + TILE) % bh
            for x0 in range(0, width, TILE):
                cols = np.arange(x0, x0 + TILE) % bw
                t = blk[np.ix_(rows, cols)]
                # tifffile pads edge tiles; keep the padding 0 like an ordinary writer
                t[max(0, height - y0):, :] = 0
                t[:, max(0, width - x0):] = 0
                yield t

    tmp = path + ".part"
    tifffile.imwrite(tmp, tiles(), shape=(height, width), dtype=np.uint8, tile=(TILE, TILE),
                     bigtiff=True, photometric="minisblack")
    os.replace(tmp, path)
    return path


def read_tif(path):
    import tifffile

    return np.asarray(tifffile.imread(path))


# ---------------------------------------------------------------------------------------------
# running and measuring


def gpuseg_cmd(a, image, out, extra=()):
    return [os.path.join(a.build, "gpuseg"), "segment", image, "--diameter", "model", "-o", out,
            *extra]


def timed(cmd, env=None, tty_log=None, sample_log=None, timeout=6 * 3600):
    """Runs cmd under GNU time (wall %e, user %U, sys %S, peak RSS %M of the process); with
    tty_log, inside `script` so that the command sees a terminal and its progress line is
    logged; with sample_log, its VmRSS/VmHWM and CPU time appended every 10 s as JSON lines.
    Returns a dict (and stderr text)."""
    tf = tempfile.NamedTemporaryFile("r", suffix=".time", delete=False)
    tf.close()
    inner = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", tf.name] + list(cmd)
    if tty_log:
        import shlex

        full = ["script", "-qfec", " ".join(shlex.quote(c) for c in inner), tty_log]
    else:
        full = inner
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen(full, stdout=subprocess.DEVNULL if tty_log else fe, stderr=fe,
                             env=env)
        stop = threading.Event()
        if sample_log:
            th = threading.Thread(target=sampler, args=(p.pid, os.path.basename(cmd[0]),
                                                        sample_log, stop, t0), daemon=True)
            th.start()
        try:
            p.wait(timeout=timeout)
        finally:
            stop.set()
            if p.poll() is None:
                p.kill()
                p.wait()
        fe.seek(0)
        err = fe.read()
    with open(tf.name) as f:
        fields = [ln.split() for ln in f.read().splitlines() if ln.strip()]
    os.unlink(tf.name)
    r = {"rc": p.returncode, "wall_s": None, "user_s": None, "sys_s": None, "peak_rss_mib": None}
    for f in fields:
        if len(f) == 4:
            try:
                e, u, s, m = map(float, f)
            except ValueError:
                continue
            r.update(wall_s=e, user_s=u, sys_s=s, cpu_s=round(u + s, 2),
                     peak_rss_mib=round(m / 1024.0, 1))
    if tty_log and os.path.exists(tty_log):
        with open(tty_log, errors="replace") as f:
            err += f.read()
    r["t_start"] = time.strftime("%H:%M:%S", time.gmtime(t0))
    return r, err


def descendants(pid):
    """pid and every process below it (from /proc/*/stat parent links)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                ppid = int(s[s.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(kids.get(q, []))
    return out


def proc_mem(pid):
    """(VmRSS, VmHWM) in MiB and (utime+stime) in s of one process; None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            st = f.read()
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        comm = s[s.index("(") + 1:s.rindex(")")]
        v = s[s.rindex(")") + 2:].split()
        rss = hwm = 0
        for ln in st.splitlines():
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1]) / 1024
            elif ln.startswith("VmHWM:"):
                hwm = int(ln.split()[1]) / 1024
        return comm, rss, hwm, (int(v[11]) + int(v[12])) / CLK
    except (OSError, ValueError, IndexError):
        return None


def sampler(pid, name, log, stop, t0):
    """Every 10 s: the named process below pid (gpuseg), its RSS, high-water mark, CPU time."""
    with open(log, "a") as f:
        while not stop.wait(10):
            for q in descendants(pid):
                m = proc_mem(q)
                if m and m[0] == name:
                    f.write(json.dumps({"t_s": round(time.time() - t0, 1), "rss_mib": round(m[1]),
                                        "hwm_mib": round(m[2]), "cpu_s": round(m[3], 1)}) + "\n")
                    f.flush()


class TreeSampler:
    """Peak of the summed RSS of a process tree (and each process's VmHWM), sampled every
    interval seconds from /proc: for a dask cluster, whose workers are separate processes."""

    def __init__(self, pid, interval=0.5):
        self.pid, self.interval = pid, interval
        self.peak_sum = 0.0
        self.hwm = {}
        self.cpu = {}
        self.stop = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            tot = 0.0
            for q in descendants(self.pid):
                m = proc_mem(q)
                if m:
                    tot += m[1]
                    self.hwm[q] = (m[0], max(self.hwm.get(q, ("", 0))[1], m[2]))
                    self.cpu[q] = m[3]
            self.peak_sum = max(self.peak_sum, tot)
            self.stop.wait(self.interval)

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()


def summary_line(err):
    """gpuseg's one line per image ("IMAGE: N masks, diameter ..."), last one."""
    lines = [ln.strip().split("\r")[-1] for ln in err.splitlines() if " masks, diameter " in ln]
    return lines[-1] if lines else None


def line_halo(line):
    """The halo a blockwise run used, from its summary line ("... halo 92, ...")."""
    import re

    m = re.search(r"halo (\d+)", line or "")
    return int(m.group(1)) if m else None


def sidecar(out):
    """The JSON a run writes beside a TIFF's labels, when there is one."""
    for p in (out + ".json", os.path.splitext(out)[0] + ".json"):
        if os.path.exists(p):
            with open(p) as f:
                return json.load(f)
    return None


def warm_up(a):
    """One small untimed run so that the OpenCL programs are compiled and cached."""
    img = write_slide(os.path.join(a.work, "warm_512.tif"), 512, 512)
    out = os.path.join(a.work, "warm_512_labels.tif")
    r, err = timed(gpuseg_cmd(a, img, out))
    if r["rc"] != 0:
        raise RuntimeError("warm-up run failed: " + err[-400:])


# ---------------------------------------------------------------------------------------------
# part slide


def part_slide(a):
    W, H = (int(v) for v in a.slide.split("x"))
    ref = a.ref
    res = {"part": "slide", "width": W, "height": H, "megapixels": W * H / 1e6, "ref_side": ref,
           "ref_repeats": a.ref_repeats, "tile": TILE}
    t0 = time.time()
    big = write_slide(os.path.join(a.work, f"slide_{W}x{H}.tif"), W, H)
    res["write_image_s"] = round(time.time() - t0, 1)
    res["image_bytes"] = os.path.getsize(big)
    refimg = write_slide(os.path.join(a.work, f"tiled_{ref}.tif"), ref, ref)
    warm_up(a)

    def ref_runs(tag):
        runs = []
        for k in range(a.ref_repeats):
            out = os.path.join(a.work, f"ref_{ref}_labels.tif")
            r, err = timed(gpuseg_cmd(a, refimg, out))
            if r["rc"] != 0:
                raise RuntimeError(f"{ref}² run failed: {err[-400:]}")
            r["line"] = summary_line(err)
            runs.append(r)
            print(f"slide: {ref}² {tag} run {k + 1}: {r['wall_s']} s wall, {r['cpu_s']} s CPU, "
                  f"{r['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
        return runs

    res["ref_before"] = ref_runs("before")
    out = os.path.join(a.work, f"slide_{W}x{H}_labels.tif")
    log = os.path.join(a.work, "slide_progress.log")
    samples = os.path.join(a.work, "slide_samples.jsonl")
    for p in (log, samples):
        if os.path.exists(p):
            os.unlink(p)
    cmd = gpuseg_cmd(a, big, out, a.slide_args.split() if a.slide_args else ())
    res["command"] = " ".join(os.path.relpath(c, common.ROOT) if os.path.isabs(c) else c
                              for c in cmd)
    print(f"slide: {res['command']} (progress in {log}, samples in {samples})", file=sys.stderr,
          flush=True)
    r, err = timed(cmd, tty_log=log, sample_log=samples)
    r["line"] = summary_line(err)
    res["slide"] = r
    if r["rc"] != 0:
        res["error"] = err[-800:]
    else:
        res["slide_sidecar"] = sidecar(out)
        res["output_bytes"] = os.path.getsize(out)
    with open(samples) as f:
        res["samples"] = [json.loads(ln) for ln in f if ln.strip()]
    res["ref_after"] = ref_runs("after")
    mp_big = W * H / 1e6
    mp_ref = ref * ref / 1e6
    refs = res["ref_before"] + res["ref_after"]
    med = lambda xs: float(np.median(xs))  # noqa: E731
    res["ref_wall_s_per_mp"] = round(med([x["wall_s"] for x in refs]) / mp_ref, 4)
    res["ref_cpu_s_per_mp"] = round(med([x["cpu_s"] for x in refs]) / mp_ref, 4)
    res["ref_peak_rss_mib"] = max(x["peak_rss_mib"] for x in refs)
    if r["rc"] == 0:
        res["slide_wall_s_per_mp"] = round(r["wall_s"] / mp_big, 4)
        res["slide_cpu_s_per_mp"] = round(r["cpu_s"] / mp_big, 4)
        res["ratio_wall_per_mp"] = round(res["slide_wall_s_per_mp"] / res["ref_wall_s_per_mp"], 3)
        res["ratio_cpu_per_mp"] = round(res["slide_cpu_s_per_mp"] / res["ref_cpu_s_per_mp"], 3)
        res["check"] = check_slide_corner(a, out, os.path.join(a.work, f"ref_{ref}_labels.tif"),
                                          res.get("slide_sidecar"), r["line"])
    if not a.keep:
        for p in (big, out):
            if os.path.exists(p):
                os.unlink(p)
    return res


def read_corner(tf, page, n):
    """The top-left n x n of a tiled page, decoding only the tiles it needs (tifffile's zarr
    store needs zarr 3; the venv has zarr 2)."""
    th, tw = page.tilelength, page.tilewidth
    ntx = -(-page.imagewidth // tw)
    out = np.zeros((-(-n // th) * th, -(-n // tw) * tw), page.dtype)
    fh = tf.filehandle
    for ty in range(-(-n // th)):
        for tx in range(-(-n // tw)):
            i = ty * ntx + tx
            fh.seek(page.dataoffsets[i])
            seg, _, shape = page.decode(fh.read(page.databytecounts[i]), i)
            out[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw] = seg.reshape(shape[-3:-1])
    return out[:n, :n]


def check_slide_corner(a, slide_labels, ref_labels, side, line=None):
    """A sanity check of the slide's labels, read back from the tiled BigTIFF (only the tiles of
    its top-left REF² corner): that corner is the REF² image's content (same tiling, same
    origin), so its masks clear of the corner's right and bottom edges are compared with the
    whole REF² run's by AP. Not an equality test: the 1-99 percentile normalisation is global
    over each image, and the slide's percentiles are not the REF² image's, so mask outlines
    move by a pixel here and there (1500 x 1200 vs 1024²: AP@0.5 0.98, AP@0.9 0.95, every
    pixel set different)."""
    import tifffile

    ref = read_tif(ref_labels)
    n = ref.shape[0]
    with tifffile.TiffFile(slide_labels) as tf:
        page = tf.pages[0]
        out = {"dtype": str(page.dtype), "shape": list(page.shape), "tiled": page.is_tiled,
               "bigtiff": tf.is_bigtiff, "compression": str(page.compression)}
        corner = read_corner(tf, page, n)
    halo = ((side or {}).get("blockwise") or {}).get("halo") or line_halo(line) or 128
    keep = n - halo
    d = diff_masks(ref, corner, inside=(keep, keep))
    out.update({"corner_side": n, "clear_of_edge_px": halo, **d})
    return out


def mask_table(lab):
    """Per label (1..max): pixel count and bounding box (y0, x0, y1, x1 exclusive)."""
    lab = lab.astype(np.int64, copy=False)
    n = int(lab.max())
    cnt = np.bincount(lab.ravel(), minlength=n + 1)
    box = np.zeros((n + 1, 4), np.int64)
    box[:, 0] = box[:, 1] = 1 << 40
    rows = np.broadcast_to(np.arange(lab.shape[0])[:, None], lab.shape)
    cols = np.broadcast_to(np.arange(lab.shape[1])[None, :], lab.shape)
    nz = lab > 0
    lv, rv, cv = lab[nz], rows[nz], cols[nz]
    np.minimum.at(box[:, 0], lv, rv)
    np.minimum.at(box[:, 1], lv, cv)
    np.maximum.at(box[:, 2], lv, rv + 1)
    np.maximum.at(box[:, 3], lv, cv + 1)
    return cnt, box


def pair_overlaps(a, b):
    """(label of a, label of b, pixels in common) for every pair that overlaps."""
    a = a.ravel()
    b = b.ravel()
    nz = (a > 0) & (b > 0)
    key = a[nz].astype(np.uint64) * np.uint64(int(b.max()) + 1) + b[nz].astype(np.uint64)
    k, c = np.unique(key, return_counts=True)
    m = np.uint64(int(b.max()) + 1)
    return (k // m).astype(np.int64), (k % m).astype(np.int64), c.astype(np.int64)


def matched(ia, ib, iou, t):
    """True positives at IoU >= t (t >= 0.5): pairs taken in order of decreasing IoU, each mask
    at most once. Over 0.5 a mask has at most one partner, so this is Cellpose's assignment;
    the order only settles exact ties at 0.5."""
    sel = np.nonzero(iou >= t)[0]
    sel = sel[np.argsort(-iou[sel], kind="stable")]
    used_a, used_b, tp = set(), set(), 0
    for k in sel:
        x, y = int(ia[k]), int(ib[k])
        if x not in used_a and y not in used_b:
            used_a.add(x)
            used_b.add(y)
            tp += 1
    return tp


def diff_masks(a, b, inside=None):
    """Masks of a whose exact pixel set is not a mask of b (equality up to renumbering), with
    their bounding-box sides; inside=(h, w): only masks of a whose box ends within [0,h)x[0,w).
    Also the same count the other way, and AP at IoU 0.5/0.9 computed from the pair overlaps
    (see matched)."""
    ca, ba = mask_table(a)
    cb, _ = mask_table(b)
    ia, ib, ov = pair_overlaps(a, b)
    same = (ov == ca[ia]) & (ov == cb[ib])
    present_a = np.nonzero(ca[1:] > 0)[0] + 1
    present_b = np.nonzero(cb[1:] > 0)[0] + 1
    eq_a = np.zeros(len(ca), bool)
    eq_a[ia[same]] = True
    eq_b = np.zeros(len(cb), bool)
    eq_b[ib[same]] = True
    sel = present_a
    if inside is not None:
        sel = sel[(ba[sel, 2] <= inside[0]) & (ba[sel, 3] <= inside[1])]
    bad = sel[~eq_a[sel]]
    side = np.maximum(ba[bad, 2] - ba[bad, 0], ba[bad, 3] - ba[bad, 1])
    iou = ov / (ca[ia] + cb[ib] - ov)
    out = {"masks_a": int(len(present_a)), "masks_b": int(len(present_b)),
           "masks_a_checked": int(len(sel)), "differ_a": int(len(bad)),
           "differ_b_any": int(len(present_b) - eq_b[present_b].sum()),
           "differ_boxes": [[int(v) for v in ba[i]] for i in bad[:50]],
           "differ_box_side": [int(s) for s in side[:50]],
           "largest_box_side_a": int(np.max(np.maximum(ba[present_a, 2] - ba[present_a, 0],
                                                       ba[present_a, 3] - ba[present_a, 1])))
           if len(present_a) else 0}
    for t in (0.5, 0.9):
        tp = matched(ia, ib, iou, t)
        out[f"ap{int(t * 100)}"] = round(tp / (len(present_a) + len(present_b) - tp), 6)
    return out


def gpuseg_eval(a, gt, pred):
    r = subprocess.run([os.path.join(a.build, "gpuseg"), "eval", gt, pred, "--thresholds",
                        "0.5,0.9", "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-300:]}
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"raw": r.stdout[-500:]}


# ---------------------------------------------------------------------------------------------
# part equal


def part_equal(a):
    sides = [int(s) for s in a.sides.split(",")]
    rl = [int(r) for r in str(a.repeats).split(",")]
    reps = {s: rl[min(i, len(rl) - 1)] for i, s in enumerate(sides)}
    res = {"part": "equal", "block": a.block, "repeats": reps, "images": []}
    warm_up(a)
    for side in sides:
        img = write_slide(os.path.join(a.work, f"tiled_{side}.tif"), side, side)
        whole = os.path.join(a.work, f"whole_{side}_labels.tif")
        blk = os.path.join(a.work, f"block_{side}_labels.tif")
        runs = {"whole": [], "block": []}
        cmds = {"whole": gpuseg_cmd(a, img, whole),
                "block": gpuseg_cmd(a, img, blk, ["--block-size", str(a.block)])}
        for k in range(reps[side]):  # interleaved, so that both see about the same load
            for name in ("whole", "block"):
                r, err = timed(cmds[name])
                if r["rc"] != 0:
                    raise RuntimeError(f"{side}² {name} failed: {err[-400:]}")
                r["line"] = summary_line(err)
                runs[name].append(r)
                print(f"equal: {side}² {name} run {k + 1}: {r['wall_s']} s wall, {r['cpu_s']} s "
                      f"CPU, {r['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
        sc = sidecar(blk) or {}
        halo = (sc.get("blockwise") or {}).get("halo") or line_halo(runs["block"][-1]["line"])
        A, B = read_tif(whole), read_tif(blk)
        d = diff_masks(A, B)
        d["bigger_than_halo"] = (sum(1 for s in d["differ_box_side"] if halo and s > halo)
                                 if d["differ_a"] <= 50 else None)
        ev = gpuseg_eval(a, whole, blk)
        del A, B
        med = lambda rs, k: float(np.median([r[k] for r in rs]))  # noqa: E731
        im = {"side": side, "megapixels": side * side / 1e6, "halo": halo,
              "blockwise": sc.get("blockwise"),
              "commands": {k: " ".join(os.path.relpath(c, common.ROOT) if os.path.isabs(c)
                                       else c for c in v) for k, v in cmds.items()},
              "runs": runs, "diff_whole_vs_block": d, "gpuseg_eval": ev}
        for name in ("whole", "block"):
            for k in ("wall_s", "cpu_s", "peak_rss_mib"):
                im[f"{name}_{k}_median"] = med(runs[name], k)
        res["images"].append(im)
        print("equal: " + json.dumps({k: v for k, v in d.items() if k != "differ_boxes"}),
              file=sys.stderr, flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# part cellpose


def seam_cuts(whole, blocks, block, margin=0):
    """Masks of a whole-image run cut at block seams in a blockwise run of the same program.

    Seams are the lines x = k*block and y = k*block (k >= 1) between the blocks' cores (gpuseg's
    cores, and Cellpose's crops once distributed_segmentation trims their overlap, are the same
    grid). A mask M of `whole` crosses a seam when it has pixels in two block columns (or rows).
    For each seam M crosses, take the most frequent label of `blocks` (0 included) over M's
    pixels on each side; M is *cut* when the two differ or either is 0 (split into several
    labels, or lost on one side), and *lost* when the most frequent label over all of M is 0.
    Masks here are far smaller than a block, so a mask crosses at most one seam per axis.
    margin: masks with a pixel within margin of the right or bottom edge are left out (when
    `whole` is a smaller image than the blockwise run's, whose corner it is)."""
    H, W = whole.shape
    wl = whole.ravel().astype(np.int64)
    nz = np.nonzero(wl)[0]
    m = wl[nz]
    b = blocks.ravel()[nz].astype(np.int64)
    ys, xs = nz // W, nz % W
    n = int(whole.max())
    crossing = np.zeros(n + 1, bool)
    cut = np.zeros(n + 1, bool)
    nb = int(b.max()) + 1

    def majority(groups, labels):
        """(group id, most frequent label) for each group (ties: the smallest label)."""
        key = groups * nb + labels
        k, c = np.unique(key, return_counts=True)
        g, lab = k // nb, k % nb
        order = np.lexsort((lab, -c, g))  # per group: largest count first, then label
        g, lab = g[order], lab[order]
        first = np.r_[True, g[1:] != g[:-1]]
        return g[first], lab[first]

    for coord in (xs, ys):
        blk = coord // block
        lo = np.full(n + 1, 1 << 30)
        hi = np.full(n + 1, -1)
        np.minimum.at(lo, m, blk)
        np.maximum.at(hi, m, blk)
        cross = hi > lo
        crossing |= cross
        sel = cross[m]
        # groups: (mask, side) with side 0 = the lower block, 1 = the upper one
        side = (blk[sel] > lo[m[sel]]).astype(np.int64)
        g, lab = majority(m[sel] * 2 + side, b[sel])
        maj = np.zeros((n + 1, 2), np.int64)
        maj[g // 2, g % 2] = lab
        c = cross & ((maj[:, 0] != maj[:, 1]) | (maj[:, 0] == 0) | (maj[:, 1] == 0))
        cut |= c
    g, lab = majority(m, b)
    lost = np.zeros(n + 1, bool)
    lost[g[lab == 0]] = True
    present = np.bincount(m, minlength=n + 1) > 0
    if margin:
        near = np.zeros(n + 1, bool)
        near[m[(xs >= W - margin) | (ys >= H - margin)]] = True
        present &= ~near
    return {"masks_whole": int(present.sum()), "masks_blockwise": int(len(np.unique(b[b > 0]))),
            "crossing_seams": int((crossing & present).sum()),
            "cut_at_seams": int((cut & present).sum()),
            "lost_at_seams": int((lost & crossing & present).sum()),
            "lost_anywhere": int((lost & present).sum())}


CP_WORKERS = 2


def cellpose_child(args):
    """In a fresh process (its whole process tree is sampled by the parent):
    whole SIDE.tif D OUT.npy: CellposeModel(bundled model).eval of the whole image;
    dist ZARR D BLOCK OUT.npy: contrib.distributed_segmentation.distributed_eval on a local
    cluster of CP_WORKERS worker processes (1 thread each, torch 1 thread each)."""
    import warnings

    warnings.filterwarnings("ignore")
    mode = args[0]
    if mode == "whole":
        _, img, diam, out = args
        model = common.bundled_cellpose_model()
        x = read_tif(img)
        t0 = time.time()
        masks = model.eval(x, diameter=int(diam), channels=[0, 0])[0]
        np.save(out, masks.astype(np.uint32))
        print(json.dumps({"eval_s": round(time.time() - t0, 2)}))
        return 0
    _, zpath, diam, block, out = args
    import zarr
    from cellpose.contrib import distributed_segmentation as ds

    z = zarr.open(zpath, mode="r")
    here = os.path.dirname(os.path.abspath(__file__))

    def patch_worker():
        # the bundled model (narrow CPnet with the style padding, common.bundled_cellpose_model)
        # in place of CellposeModel(**model_kwargs), one torch thread per worker
        import sys as _s

        _s.path.insert(0, here)
        import cellpose.models as cm
        import common as cmn
        import torch

        torch.set_num_threads(1)
        orig = cm.CellposeModel

        def make(**kw):
            cm.CellposeModel = orig  # bundled_cellpose_model builds a CellposeModel itself
            try:
                m = cmn.bundled_cellpose_model()
            finally:
                cm.CellposeModel = make
            ev = m.eval

            def eval_plane(x, **kw):
                # a (1, h, w) block of the Z = 1 volume: segmented as the 2-D plane it is,
                # masks handed back as (1, h, w) for the module's 3-D bookkeeping
                out = ev(x[0], **kw)
                return (out[0][None],) + tuple(out[1:])

            m.eval = eval_plane
            return m

        cm.CellposeModel = make
        return True

    t0 = time.time()
    with ds.myLocalCluster(ncpus=1, n_workers=CP_WORKERS, threads_per_worker=1,
                           memory_limit="8GB", persist_config=False) as cluster:
        cluster.client.run(patch_worker)
        t1 = time.time()
        seg, boxes = ds.distributed_eval(
            input_zarr=z, blocksize=(1, int(block), int(block)), write_path=out + ".zarr",
            model_kwargs={"gpu": False},
            eval_kwargs={"diameter": int(diam), "channels": [0, 0]},
            cluster=cluster)
        t2 = time.time()
        lab = np.asarray(seg[0])
    np.save(out, lab.astype(np.uint32))
    print(json.dumps({"cluster_start_s": round(t1 - t0, 2), "distributed_eval_s": round(t2 - t1, 2),
                      "n_boxes": len(boxes)}))
    shutil.rmtree(out + ".zarr", ignore_errors=True)
    return 0


def run_tree(cmd, cwd=None):
    """Runs cmd, sampling its whole process tree (summed RSS, each process's high-water mark,
    CPU time of every process seen); returns a dict and the child's stdout."""
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=cwd)
        with TreeSampler(p.pid) as ts:
            _, status, ru = os.wait4(p.pid, 0)
        wall = time.time() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    rc = os.waitstatus_to_exitcode(status)
    hw = sorted((v for v in ts.hwm.values()), key=lambda v: -v[1])
    r = {"rc": rc, "wall_s": round(wall, 2),
         "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
         "cpu_s_sampled_all": round(sum(ts.cpu.values()), 2),
         "peak_rss_sum_mib": round(ts.peak_sum), "sum_of_process_peaks_mib":
         round(sum(v[1] for v in hw)), "processes": [[c, round(h)] for c, h in hw[:8]]}
    if rc != 0:
        r["error"] = err[-1500:]
    return r, out


def part_cellpose(a):
    side, block = a.cp_side, a.block
    wside = a.cp_whole_side or side
    diam = 23  # an integer: distributed_eval slices with overlap = 2 * diameter
    res = {"part": "cellpose", "side": side, "whole_side": wside, "block": block,
           "diameter": diam, "cellpose_workers": CP_WORKERS}
    warm_up(a)
    img = write_slide(os.path.join(a.work, f"tiled_{side}.tif"), side, side)
    zpath = os.path.join(a.work, f"tiled_{side}.zarr")
    if not os.path.exists(zpath):
        import zarr

        z = zarr.open(zpath, mode="w", shape=(1, side, side), chunks=(1, block, block),
                      dtype=np.uint8)
        z[0] = read_tif(img)
    me = [sys.executable, os.path.abspath(__file__), "--work", a.work, "--cellpose-child"]
    gb = os.path.join(a.work, f"cp_gpuseg_block_{side}.tif")
    gw = os.path.join(a.work, f"cp_gpuseg_whole_{wside}.tif")
    wimg = write_slide(os.path.join(a.work, f"tiled_{wside}.tif"), wside, wside)
    cd = os.path.join(a.work, f"cp_dist_{side}.npy")
    cw = os.path.join(a.work, f"cp_whole_{wside}.npy")
    gpuseg = os.path.join(a.build, "gpuseg")

    def gp(cmd):
        r, err = timed(cmd)
        r["line"] = summary_line(err)
        return r

    def cp(cmd):
        r, out = run_tree(cmd, cwd=a.work)
        r["child"] = out.strip()[-300:]
        return r

    steps = {  # gpuseg: blockwise at the same block size and diameter, and its whole run
        "gpuseg_block": (gb, lambda: gp([gpuseg, "segment", img, "--diameter", str(diam), "-o",
                                         gb, "--block-size", str(block)])),
        "gpuseg_whole": (gw, lambda: gp([gpuseg, "segment", wimg, "--diameter", str(diam),
                                         "-o", gw])),
        "cellpose_distributed": (cd, lambda: cp(me + ["dist", zpath, str(diam), str(block),
                                                      cd])),
        "cellpose_whole": (cw, lambda: cp(me + ["whole", wimg, str(diam), cw])),
    }
    todo = a.cp_steps.split(",") if a.cp_steps else []
    for name, (out, fn) in steps.items():
        # each step's record is kept beside its output, so that steps can run as separate
        # processes (--cp-steps) and a final run without --cp-steps assembles them (running
        # only the steps that have no record yet)
        rec = out + ".run.json"
        if name in todo or not (todo or os.path.exists(rec) and os.path.exists(out)):
            r = fn()
            with open(rec, "w") as f:
                json.dump(r, f)
            print(f"cellpose: {name}: {r}", file=sys.stderr, flush=True)
        if not os.path.exists(rec):
            res[name] = {"rc": None, "error": "not run (--cp-steps)"}
            continue
        with open(rec) as f:
            res[name] = json.load(f)
    if a.cp_steps:
        return res
    if res["cellpose_distributed"]["rc"] == 0 and res["cellpose_whole"]["rc"] == 0:
        n = wside
        margin = 0 if wside == side else 4 * diam
        res["seams_margin"] = margin
        res["seams_gpuseg"] = seam_cuts(read_tif(gw), read_tif(gb)[:n, :n], block, margin)
        res["seams_cellpose"] = seam_cuts(np.load(cw), np.load(cd)[:n, :n], block, margin)
        res["ap_cellpose_whole_vs_gpuseg_whole"] = diff_masks(np.load(cw), read_tif(gw))
        for k in ("differ_boxes", "differ_box_side"):
            res["ap_cellpose_whole_vs_gpuseg_whole"].pop(k)
    return res


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(common.ROOT, "build-bench"))
    ap.add_argument("--work", required=True, help="folder for images and outputs (large)")
    ap.add_argument("--parts", default="equal,slide,cellpose")
    ap.add_argument("--sides", default="4096,8192")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--repeats", default="3,1", help="per side of --sides (last one repeats)")
    ap.add_argument("--slide", default="40000x25000")
    ap.add_argument("--slide-args", default="", help="extra gpuseg options for the slide run")
    ap.add_argument("--ref", type=int, default=4096)
    ap.add_argument("--ref-repeats", type=int, default=2, help="before and after the slide")
    ap.add_argument("--cp-side", type=int, default=8192)
    ap.add_argument("--cp-whole-side", type=int, default=0,
                    help="side of the seam count's whole-image runs (default: --cp-side)")
    ap.add_argument("--cp-steps", default="",
                    help="cellpose part: run only these of gpuseg_block,gpuseg_whole,"
                         "cellpose_distributed,cellpose_whole (records kept in WORK); without "
                         "it the missing steps run and all are assembled")
    ap.add_argument("--keep", action="store_true", help="keep the slide and its labels")
    ap.add_argument("--cellpose-child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cellpose_child:
        return cellpose_child(a.cellpose_child)
    os.makedirs(a.work, exist_ok=True)
    a.work = os.path.abspath(a.work)
    fns = {"equal": part_equal, "slide": part_slide, "cellpose": part_cellpose}
    for name in a.parts.split(","):
        t0 = time.time()
        try:
            res = fns[name](a)
        except Exception as e:  # noqa: BLE001 - one part's failure is reported, others run
            res = {"part": name, "error": f"{type(e).__name__}: {e}"}
        res["seconds"] = round(time.time() - t0, 1)
        res["loadavg_end"] = common.loadavg()
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.exit(main())
