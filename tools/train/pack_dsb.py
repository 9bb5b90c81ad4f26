#!/usr/bin/env python3
"""Pack dsb2018/{train,dev} into ONE .npz for training where the PNG folders are not available
(a remote GPU machine). Stored per split, in manifest order:
  <split>_ids (str), <split>_shapes (n,2 int32: H,W), <split>_n_objects (manifest column),
  <split>_img_<k> (uint8 bytes: the 8-bit image, alpha dropped, as lossless WebP: one grey channel
      when R == G == B, else the 3 channels; WebP lossless is ~25% smaller than deflate here and
      keeps the file under 30 MB),
  <split>_lbl (uint16 or int32, the smallest holding the labels, all images concatenated flat),
  <split>_manifest_sha256.
The training input is grey = float32(R+G+B) / float32(3); the packer asserts, for every image,
that the decoded image gives exactly the float32 rgb.mean(axis=2) that train_nuclei.py trains on
from the PNGs, and reads the whole file back through train_nuclei.py's loader and compares.
No pickled objects are stored.

Usage (from the repository root): .venv/bin/python tools/train/pack_dsb.py [--out .device/data/dsb2018.npz]
"""
import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_nuclei as tn  # noqa: E402  (same DATA path, manifest reader and loaders)


def encode(u8):
    """HxWx3 uint8 R,G,B -> lossless WebP bytes (grey when the channels are equal)."""
    if np.array_equal(u8[:, :, 0], u8[:, :, 1]) and np.array_equal(u8[:, :, 0], u8[:, :, 2]):
        a = np.ascontiguousarray(u8[:, :, 0])
    else:
        a = np.ascontiguousarray(u8[:, :, ::-1])  # OpenCV wants BGR
    ok, buf = cv2.imencode(".webp", a, [cv2.IMWRITE_WEBP_QUALITY, 101])  # >100: lossless
    assert ok
    return np.frombuffer(buf.tobytes(), np.uint8)


def pack_split(split, out):
    ids = tn.read_manifest(split)
    lines = (tn.DATA / split / "manifest.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    col = head.index("n_objects")
    nobj = [int(ln.split("\t")[col]) for ln in lines[1:] if ln.strip()]
    shapes, lbls = [], []
    for k, i in enumerate(ids):
        rgb = tn.load_rgb(tn.DATA / split / "images" / f"{i}.png")  # float32 R,G,B of uint8
        u8 = rgb.astype(np.uint8)
        assert np.array_equal(u8.astype(np.float32), rgb), i
        enc = encode(u8)
        back = tn.decode_rgb(enc)
        if not np.array_equal(back, u8):
            raise SystemExit(f"pack_dsb: {split}/{i}: WebP round trip is not exact")
        if not np.array_equal(tn.two_channel_from_u8(back), tn.to_two_channel(rgb)):
            raise SystemExit(f"pack_dsb: {split}/{i}: grey from R+G+B differs from mean(axis=2)")
        lb = tn.load_labels(tn.DATA / split / "labels" / f"{i}.png")
        assert lb.shape == u8.shape[:2], i
        out[f"{split}_img_{k}"] = enc
        shapes.append(lb.shape)
        lbls.append(lb.ravel())
    lb_all = np.concatenate(lbls)
    assert lb_all.min() >= 0
    ldt = np.uint16 if lb_all.max() <= np.iinfo(np.uint16).max else np.int32
    out[f"{split}_ids"] = np.array(ids)
    out[f"{split}_shapes"] = np.array(shapes, np.int32)
    out[f"{split}_n_objects"] = np.array(nobj, np.int32)
    out[f"{split}_lbl"] = lb_all.astype(ldt)
    out[f"{split}_manifest_sha256"] = np.array(tn.sha256_file(tn.DATA / split / "manifest.tsv"))
    print(f"{split}: {len(ids)} images, {lb_all.size} pixels, labels max {lb_all.max()} "
          f"as {np.dtype(ldt).name}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=tn.REPO / ".device" / "data" / "dsb2018.npz")
    a = p.parse_args()
    arrs = {}
    for split in ("train", "dev"):
        pack_split(split, arrs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrs)
    os.replace(tmp, a.out)
    # read back through the loader train_nuclei.py uses, and compare with the PNG path
    for split in ("train", "dev"):
        ids, imgs, lbls = tn.load_split(split, pack=a.out)
        ids2, imgs2, lbls2 = tn.load_split(split)
        assert ids == ids2
        for x, y, u, v in zip(imgs, imgs2, lbls, lbls2):
            assert x.dtype == y.dtype and np.array_equal(x, y)
            assert u.dtype == v.dtype and np.array_equal(u, v)
    rgbs = [tn.load_rgb(tn.DATA / "dev" / "images" / f"{i}.png") for i in ids]
    for x, y in zip(tn.pack_dev_rgb(a.out), rgbs):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    print(f"wrote {a.out}: {a.out.stat().st_size} bytes; read-back identical to the PNGs",
          file=sys.stderr)


if __name__ == "__main__":
    main()
