#!/usr/bin/env python3
"""tools/check_polygons.py: checks gpuseg's outline files against independent readers and,
where Cellpose is installed, against Cellpose's own outlines.

    check_polygons.py LABELS.npy STEM_rois.zip STEM.geojson STEM_cp_outlines.txt

* roifile (ImageJ ROI reader by C. Gohlke) reads the ROI zip: one ROI per non-empty outline,
  named by the zero-padded label, freehand type, bounds = min .. max + 1 of the vertices, and
  coordinates equal to the text file's;
* every vertex is a pixel of its mask with a 4-neighbour outside it (a border pixel), and the
  ROI bounds equal the mask's bounding box for masks of one piece;
* GeoJSON: closed rings, vertices = the text file's + 0.5; with shapely, each polygon's area
  equals Pick's count (mask pixels with holes filled - vertices / 2 - 1) when its vertices are
  distinct and the mask is one 8-connected piece, and is never larger than the filled mask;
* with Cellpose (cellpose.utils.outlines_list, OpenCV): the text file equals Cellpose's
  outlines exactly, and Cellpose's own save_rois zip holds the same coordinates and bounds.

Exit 0 when all hold, 1 on a mismatch, 77 (skip) when numpy or roifile cannot be imported.
"""
import json
import sys

try:
    import numpy as np
    import roifile
except ImportError as e:  # the ctest reports a skip
    print(f"SKIP: {e}")
    sys.exit(77)


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    lab_path, zip_path, gj_path, txt_path = sys.argv[1:5]
    lab = np.load(lab_path)
    labels = [int(v) for v in np.unique(lab) if v != 0]
    with open(txt_path) as f:
        lines = f.read().split("\n")
    if lines[-1] != "":
        fail("the text file does not end with a newline")
    lines = lines[:-1]
    if len(lines) != len(labels):
        fail(f"{len(lines)} text lines for {len(labels)} masks")
    polys = {}
    for v, line in zip(labels, lines):
        xy = np.array([int(t) for t in line.split(",")] if line else [], dtype=np.int64)
        polys[v] = xy.reshape(-1, 2)

    # every vertex a border pixel of its own mask
    H, W = lab.shape
    pad = np.pad(lab, 1)
    for v, p in polys.items():
        if len(p) == 0:
            continue
        x, y = p[:, 0], p[:, 1]
        if np.any(lab[y, x] != v):
            fail(f"label {v}: a vertex outside the mask")
        nb = np.stack([pad[y, x + 1], pad[y + 2, x + 1], pad[y + 1, x], pad[y + 1, x + 2]])
        if np.any(np.all(nb == v, axis=0)):
            fail(f"label {v}: a vertex inside the mask")

    # ROI zip through roifile
    rois = roifile.roiread(zip_path)
    nonempty = [v for v in labels if len(polys[v])]
    if len(rois) != len(nonempty):
        fail(f"{len(rois)} ROIs for {len(nonempty)} non-empty outlines")
    from scipy import ndimage

    objects = ndimage.find_objects(lab)
    one_piece = 0
    for roi, v in zip(rois, nonempty):
        p = polys[v]
        if roi.name != f"{v:04d}":
            fail(f"ROI name {roi.name!r} for label {v}")
        if roi.roitype != roifile.ROI_TYPE.FREEHAND:
            fail(f"ROI {v}: type {roi.roitype}")
        c = roi.coordinates()
        if c.shape != p.shape or np.any(c != p):
            fail(f"ROI {v}: coordinates differ from the text file")
        if (roi.left, roi.top, roi.right, roi.bottom) != (
            p[:, 0].min(), p[:, 1].min(), p[:, 0].max() + 1, p[:, 1].max() + 1):
            fail(f"ROI {v}: bounds {(roi.left, roi.top, roi.right, roi.bottom)}")
        sl = objects[v - 1]
        if ndimage.label(lab[sl] == v, structure=np.ones((3, 3)))[1] == 1:
            one_piece += 1
            if (roi.left, roi.top, roi.right, roi.bottom) != (sl[1].start, sl[0].start,
                                                              sl[1].stop, sl[0].stop):
                fail(f"ROI {v}: bounds differ from the mask's bounding box")

    # GeoJSON
    with open(gj_path) as f:
        gj = json.load(f)
    feats = gj["features"]
    if gj["type"] != "FeatureCollection" or len(feats) != len(nonempty):
        fail(f"GeoJSON: {len(feats)} features for {len(nonempty)} outlines")
    try:
        import shapely.geometry as sg
    except ImportError:
        sg = None
    pick_checked = 0
    for feat, v in zip(feats, nonempty):
        ring = np.array(feat["geometry"]["coordinates"][0])
        p = polys[v]
        if feat["properties"]["objectType"] != "detection" or feat["properties"]["name"] != str(v):
            fail(f"feature {v}: properties {feat['properties']}")
        if np.any(ring[0] != ring[-1]) or ring.shape != (len(p) + 1, 2):
            fail(f"feature {v}: ring not closed or wrong length")
        if np.any(ring[:-1] != p + 0.5):
            fail(f"feature {v}: vertices differ from the text file + 0.5")
        if sg is not None:
            area = sg.Polygon(ring).area
            filled = int(ndimage.binary_fill_holes(lab == v).sum())
            if area > filled + 1e-9:
                fail(f"feature {v}: area {area} above the filled mask's {filled}")
            pieces = ndimage.label(lab == v, structure=np.ones((3, 3)))[1]
            if pieces == 1 and len({(int(a), int(b)) for a, b in p}) == len(p):
                pick_checked += 1
                want = filled - len(p) / 2 - 1
                if abs(area - want) > 1e-9:
                    fail(f"feature {v}: area {area}, Pick's count {want}")

    # Cellpose itself
    try:
        from cellpose import io as cpio
        from cellpose import utils as cputils
    except ImportError:
        cputils = None
    if cputils is not None:
        ref = cputils.outlines_list(lab.astype(np.int32), multiprocessing=False)
        for v, o in zip(labels, ref):
            o = np.asarray(o, dtype=np.int64).reshape(-1, 2)
            if o.shape != polys[v].shape or np.any(o != polys[v]):
                fail(f"label {v}: outline differs from Cellpose's outlines_list "
                     f"({len(polys[v])} vs {len(o)} vertices)")
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            cpio.save_rois(lab, os.path.join(d, "x.png"))
            cp_rois = roifile.roiread(os.path.join(d, "x_rois.zip"))
        if len(cp_rois) != len(rois):
            fail(f"Cellpose wrote {len(cp_rois)} ROIs, gpuseg {len(rois)}")
        for a, b in zip(rois, cp_rois):
            if (a.left, a.top, a.right, a.bottom, a.roitype, a.options) != (
                b.left, b.top, b.right, b.bottom, b.roitype, b.options) or np.any(
                    a.coordinates() != b.coordinates()):
                fail(f"ROI {a.name} differs from Cellpose's")
    print(f"ok: {len(labels)} masks, {len(rois)} ROIs ({one_piece} of one piece checked against "
          f"the bounding box), {pick_checked} GeoJSON areas by Pick's theorem"
          f"{'' if sg is not None else ' (shapely missing: areas not checked)'}, Cellpose "
          f"{'identical' if cputils is not None else 'not installed: not compared'}")


if __name__ == "__main__":
    main()
