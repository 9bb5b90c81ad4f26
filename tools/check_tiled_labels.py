#!/usr/bin/env python3
"""tools/check_tiled_labels.py: checks a label file written by gpuseg_labels_tiff_* (the test
tests/test_region.c) with tifffile: one page, tiled BigTIFF, deflate, the expected size, tile and
dtype, and the test's label pattern. Usage: check_tiled_labels.py FILE WIDTH HEIGHT TILE DTYPE.
Exit 0 when it matches, 1 (with one line saying what differs) when not, 77 when tifffile or
numpy cannot be imported."""
import sys

try:
    import numpy as np
    import tifffile
except ImportError as e:  # skip, not fail: the C test says so
    print(f"check_tiled_labels: {e}", file=sys.stderr)
    sys.exit(77)


def fail(msg):
    print(f"check_tiled_labels: {sys.argv[1]}: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    path, width, height, tile, dtype = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
    with tifffile.TiffFile(path) as tf:
        if not tf.is_bigtiff:
            fail("not a BigTIFF")
        if len(tf.pages) != 1:
            fail(f"{len(tf.pages)} pages")
        page = tf.pages[0]
        if not page.is_tiled or (page.tilelength, page.tilewidth) != (tile, tile):
            fail(f"tiles {page.tilelength}x{page.tilewidth}, expected {tile}x{tile}")
        if page.compression != tifffile.COMPRESSION.ADOBE_DEFLATE:
            fail(f"compression {page.compression!r}")
        a = page.asarray()
    if a.shape != (height, width) or a.dtype != np.dtype(dtype):
        fail(f"array {a.shape} {a.dtype}, expected {(height, width)} {dtype}")
    y, x = np.mgrid[0:height, 0:width].astype(np.uint64)
    want = (x // 5) * 1000 + (y // 3) * 7 + 1
    want = (want & 0xFFFF) if dtype == "uint16" else (want * 3) & 0xFFFFFFFF
    bad = np.argwhere(a != want.astype(a.dtype))
    if len(bad):
        r, c = bad[0]
        fail(f"{len(bad)} labels differ, first at (x={c}, y={r}): {a[r, c]} != {want[r, c]}")
    print(f"check_tiled_labels: {path}: {width}x{height} {dtype}, tiles {tile}, BigTIFF, deflate: ok")


if __name__ == "__main__":
    main()
