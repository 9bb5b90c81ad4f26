#!/usr/bin/env python3
"""tests/fuzz/make_corpus.py: writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/):
small valid files of every format each parser reads plus hand-broken variants. Inputs: numpy,
tifffile and OpenCV (cv2) from the project venv, and the model fixtures in tests/fixtures/model
(written by tools/fixtures with Cellpose 3.1.1.3 / torch). Rerun: /work/main/.venv/bin/python
tests/fuzz/make_corpus.py. Files named crash-* are regression inputs for bugs the fuzzers found;
this script never deletes them. Deterministic (fixed seed)."""
import io
import os
import struct
import zipfile

import cv2
import numpy as np
import tifffile

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
MODELS = os.path.join(ROOT, "..", "fixtures", "model")
rng = np.random.default_rng(8)


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy_bytes(a, version=None):
    b = io.BytesIO()
    if version is None:
        np.save(b, a)
    else:
        np.lib.format.write_array(b, a, version=version)
    return b.getvalue()


def enc(ext, a, params=()):
    ok, buf = cv2.imencode(ext, a, list(params))
    assert ok
    return buf.tobytes()


def tif(a, **kw):
    b = io.BytesIO()
    tifffile.imwrite(b, a, **kw)
    return b.getvalue()


# ---- images: every format gpuseg_image_read detects ----
g8 = rng.integers(0, 256, (12, 16), dtype=np.uint8)
rgb = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
g16 = rng.integers(0, 65536, (8, 11), dtype=np.uint16)
f32 = rng.random((6, 5), dtype=np.float32)
imgs = {
    "grey.png": enc(".png", g8),
    "rgb.png": enc(".png", rgb),
    "rgba.png": enc(".png", rgba),
    "grey16.png": enc(".png", g16),
    "grey.jpg": enc(".jpg", g8),
    "rgb.jpg": enc(".jpg", rgb),
    "rgb.bmp": enc(".bmp", rgb),
    "grey.pgm": enc(".pgm", g8),
    "rgb.ppm": enc(".ppm", rgb),
    "grey16.pgm": enc(".pgm", g16),
    # 2x1 GIF, 2-colour palette, hand-assembled (OpenCV's GIF writer is optional)
    "tiny.gif": bytes.fromhex("4749463839610200010080000000000000ffffff21f90401000000002c"
                              "00000000020001000002024c01003b"),
    "u8.tif": tif(g8),
    "u16.tif": tif(g16),
    "f32.tif": tif(f32),
    "rgb.tif": tif(rgb, photometric="rgb"),
    "rgb_planar.tif": tif(np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate"),
    "pages.tif": tif(np.stack([g8, g8 // 2, g8 // 3])),
    "big.tif": tif(g16, bigtiff=True),
    "tiled.tif": tif(rng.integers(0, 256, (32, 48), dtype=np.uint8), tile=(16, 16)),
    "strips.tif": tif(g8, rowsperstrip=3),
    "u32.tif": tif(g16.astype(np.uint32)),
    "u8.npy": npy_bytes(g8),
    "rgb.npy": npy_bytes(rgb),
    "flows.npy": npy_bytes(rng.random((3, 6, 5), dtype=np.float32)),
    "pages4.npy": npy_bytes(rng.integers(0, 9, (2, 5, 6, 2), dtype=np.uint16)),
}
for name, data in imgs.items():
    put("image", name, data)
put("image", "broken-empty", b"")
put("image", "broken-png-truncated.png", imgs["rgb.png"][:60])
put("image", "broken-tiff-truncated.tif", imgs["pages.tif"][: len(imgs["pages.tif"]) // 2])
put("image", "broken-jpeg-truncated.jpg", imgs["rgb.jpg"][:200])
# TIFF whose first IFD offset points past the end
put("image", "broken-tiff-ifd.tif", b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\x00" * 8)
# PGM header claiming a huge image with no pixels
put("image", "broken-pgm-huge.pgm", b"P5\n100000 100000\n255\n")
# BMP with a negative (top-down) height and truncated pixels
put("image", "broken-bmp.bmp", imgs["rgb.bmp"][:70])

# ---- .npy arrays ----
npys = {
    "u8.npy": npy_bytes(g8),
    "u16.npy": npy_bytes(g16),
    "i32.npy": npy_bytes(rng.integers(-5, 5, (3, 4), dtype=np.int32)),
    "u32.npy": npy_bytes(rng.integers(0, 9, (7,), dtype=np.uint32)),
    "f32_4d.npy": npy_bytes(rng.random((2, 2, 3, 2), dtype=np.float32)),
    "v2.npy": npy_bytes(g8, version=(2, 0)),
    "v3.npy": npy_bytes(g8, version=(3, 0)),
}
for name, data in npys.items():
    put("npy", name, data)
put("npy", "broken-fortran.npy", npy_bytes(np.asfortranarray(g16)))
put("npy", "broken-bigendian.npy", npy_bytes(g16.astype(">u2")))
put("npy", "broken-f64.npy", npy_bytes(f32.astype(np.float64)))
put("npy", "broken-short.npy", npys["u16.npy"][:-3])
put("npy", "broken-long.npy", npys["u16.npy"] + b"\x00")
put("npy", "broken-5d.npy", npy_bytes(np.zeros((1, 1, 1, 1, 2), np.uint8)))
hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"
hdr += b" " * (63 - (10 + len(hdr)) % 64) + b"\n"
put("npy", "broken-huge-shape.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr)

# ---- model files (torch.save ZIP archives), their ZIPs and their pickles ----
small = ["legacy.pth", "checkpoint.pth", "cp4_like.pth", "dtypes.pth", "dtypes_be.pth",
         "dtypes_p4.pth"]
models = {n: open(os.path.join(MODELS, n), "rb").read() for n in small + ["tiny_cpnet.pth"]}
for n, data in models.items():
    put("model", n, data)
tiny = models["tiny_cpnet.pth"]
put("model", "broken-tiny-truncated.pth", tiny[: len(tiny) - 700])
put("model", "broken-tiny-head.pth", tiny[:4096])
for n in small:
    put("zip", n, models[n])
# a plain stored ZIP with a data descriptor-free layout and a forced Zip64 entry
b = io.BytesIO()
with zipfile.ZipFile(b, "w", compression=zipfile.ZIP_STORED) as z:
    z.writestr("a/data.pkl", b"\x80\x02}q\x00.")
    with z.open("a/data/0", "w", force_zip64=True) as f:
        f.write(b"\x00" * 16)
put("zip", "zip64.zip", b.getvalue())
b = io.BytesIO()
with zipfile.ZipFile(b, "w", compression=zipfile.ZIP_DEFLATED) as z:
    z.writestr("a/data.pkl", b"x" * 64)
put("zip", "broken-deflated.zip", b.getvalue())
put("zip", "broken-eocd-only.zip", b"PK\x05\x06" + b"\x00" * 18)
for n in small + ["tiny_cpnet.pth"]:
    try:
        with zipfile.ZipFile(io.BytesIO(models[n])) as z:
            pk = [i for i in z.namelist() if i.endswith("data.pkl")]
            if pk:
                put("pickle", n.replace(".pth", ".pkl"), z.read(pk[0]))
    except zipfile.BadZipFile:
        pass  # legacy (pre-1.6) files are not ZIPs
put("pickle", "broken-empty.pkl", b"")
put("pickle", "broken-reduce-os-system.pkl", b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.")
put("pickle", "broken-no-stop.pkl", b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01u")
put("pickle", "broken-deep-marks.pkl", b"\x80\x02" + b"(" * 2000 + b".")
# Cellpose size models (object .npy, numpy-mode pickle): the one train_size wrote
# (tests/fixtures/size), cut short, and a protocol-2 one whose _reconstruct is os.system
with open(os.path.join(ROOT, "..", "fixtures", "size", "size_nuclei.npy"), "rb") as f:
    _size = f.read()
put("pickle", "size_nuclei.npy", _size)
put("pickle", "broken-size-truncated.npy", _size[:700])
_hdr = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }"
_hdr += b" " * (63 - (10 + len(_hdr)) % 64) + b"\n"
put("pickle", "broken-size-os-system.npy", b"\x93NUMPY\x01\x00" + bytes([len(_hdr), 0]) + _hdr +
    b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.")


# ---- shm headers: 8 bytes segment size, then the 128-byte version-1 header ----
def shm(seg, state=1, dtype=2, ndim=2, shape=(20, 30, 0, 0), offset=4096, nbytes=None,
        n_masks=5, diameter=17.5, pid=1234, start=99, magic=b"GPUSEGSH", version=1, hsize=128,
        kind=1):
    if nbytes is None:
        nbytes = int(np.prod([s for s in shape[:ndim]])) * (2 if dtype == 2 else 4)
    h = magic + struct.pack("<6I", version, hsize, state, dtype, ndim, kind)
    h += struct.pack("<4Q", *shape) + struct.pack("<3Q", offset, nbytes, n_masks)
    h += struct.pack("<d", diameter) + struct.pack("<2Q", pid, start)
    h += struct.pack("<2I", 0xDEADBEEF, 0) + struct.pack("<Q", 1_700_000_000_000_000_000)
    assert len(h) == 128
    return struct.pack("<Q", seg) + h


put("shm", "ready_u16.bin", shm(8192))
put("shm", "ready_u32_3d.bin", shm(1 << 20, dtype=3, ndim=3, shape=(4, 50, 60, 0)))
put("shm", "writing.bin", shm(8192, state=0))
put("shm", "broken-short-segment.bin", shm(4096))
put("shm", "broken-nan-diameter.bin", shm(8192, diameter=float("nan")))
put("shm", "broken-overflow-shape.bin", shm(1 << 40, ndim=4, shape=(1 << 20, 1 << 20, 1 << 20, 1 << 20)))
put("shm", "broken-magic.bin", shm(8192, magic=b"GPUSEGXX"))
put("shm", "broken-offset.bin", shm(1 << 30, offset=4097))


# ---- flows -> masks (fuzz_masks): H-1, W-1, mode (bit 0 compact, bit 1 defaults), cellprob and
# flow thresholds (f32), niter (u16), min_size (i16), max_size_fraction (f32), then the [3, H, W]
# values: float32, or in compact mode one signed byte per value * 16 (-128 NaN, 127 +Inf) ----
def masks_seed(values, mode=1, cp=0.0, ft=0.4, niter=200, min_size=15, maxf=0.4):
    _, h, w = values.shape
    hdr = bytes([h - 1, w - 1, mode]) + struct.pack("<ffHhf", cp, ft, niter, min_size, maxf)
    assert len(hdr) == 19
    if mode & 1:
        q = np.clip(np.round(np.nan_to_num(values, nan=0, posinf=0) * 16), -127, 126)
        q = q.astype(np.int8)
        q[np.isnan(values)] = -128
        q[np.isposinf(values)] = 127
        return hdr + q.tobytes()
    return hdr + values.astype("<f4").tobytes()


def discs(h, w, centres, r):
    """Network-like outputs for discs: flows of length 5 towards each centre, cellprob +-4."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((3, h, w), np.float32)
    out[2] = -4
    for cy, cx in centres:
        d = np.hypot(y - cy, x - cx)
        inside = d <= r
        n = np.maximum(d, 1e-6)
        out[0][inside] = (5 * (cy - y) / n)[inside]
        out[1][inside] = (5 * (cx - x) / n)[inside]
        out[2][inside] = 4
    return out


put("masks", "disc24.bin", masks_seed(discs(24, 24, [(12, 11)], 7)))
put("masks", "two_discs_raw.bin", masks_seed(discs(32, 30, [(9, 9), (22, 20)], 6), mode=0))
put("masks", "defaults_1x1.bin", masks_seed(np.array([[[0.5]], [[0.0]], [[3.0]]], np.float32), mode=3))
put("masks", "no_filter.bin", masks_seed(discs(20, 20, [(10, 10)], 3), min_size=-1, ft=0.0))
grid = [(cy, cx) for cy in range(4, 48, 8) for cx in range(4, 48, 8)]
put("masks", "many_small.bin", masks_seed(discs(48, 48, grid, 2.5), niter=60))
noisy = discs(16, 16, [(8, 8)], 5) + rng.normal(0, 1.5, (3, 16, 16)).astype(np.float32)
put("masks", "noisy_qc.bin", masks_seed(noisy, mode=0, ft=0.2))
bad = discs(12, 12, [(6, 6)], 4)
bad[1, 3, 4] = np.nan
put("masks", "broken-nan-flow.bin", masks_seed(bad, mode=0))
bad = discs(12, 12, [(6, 6)], 4)
bad[2, 6, 6] = np.inf
put("masks", "broken-inf-cellprob.bin", masks_seed(bad))
put("masks", "broken-nan-params.bin",
    masks_seed(discs(16, 16, [(8, 8)], 5), cp=float("nan"), ft=float("inf"), maxf=float("nan")))
