"""masks_from_flows, flows_from_labels, average_precision, imread and the shm helpers."""

import ctypes
import json

import numpy as np
import pytest

import gpuseg
from conftest import EXAMPLE_LABELS, MASK_FIXTURES, REPO, run_cli

VOL_FIXTURES = REPO / "tests" / "fixtures" / "vol"


@pytest.mark.parametrize("flows,masks,kw", [
    ("dsb65_flows.npy", "dsb65_masks_qc.npy", {}),
    ("usi_flows.npy", "usi_masks_qc.npy", {}),
    ("usi_flows.npy", "usi_masks_noqc.npy", {"flow_threshold": 0.0}),
    ("usi_flows.npy", "usi_masks_niter57_cp07.npy", {"niter": 57, "cellprob_threshold": 0.7}),
])
def test_masks_from_flows_meets_the_c_tests_expectations(flows, masks, kw):
    """tests/test_masks.c's acceptance on the same Cellpose fixtures: the same dtype and mask
    count, AP@0.5 >= 0.99, AP@0.9 >= 0.95, >= 99.9% of pixels identical."""
    fl = np.load(MASK_FIXTURES / flows)
    ref = np.load(MASK_FIXTURES / masks)
    lab = gpuseg.masks_from_flows(fl, **kw)
    assert lab.dtype == ref.dtype and lab.shape == ref.shape
    assert int(lab.max()) == int(ref.max())
    ap, tp, fp, fn = gpuseg.average_precision(ref, lab, thresholds=(0.5, 0.9))
    assert ap[0] >= 0.99 and ap[1] >= 0.95
    assert (lab == ref).sum() >= ref.size - ref.size // 1000


def test_masks_from_flows_equals_cli(tmp_path):
    src = MASK_FIXTURES / "dsb313_flows.npy"
    run_cli("masks", src, "-o", tmp_path / "m.npy")
    assert np.array_equal(gpuseg.masks_from_flows(np.load(src)), np.load(tmp_path / "m.npy"))


def test_masks_from_flows_refuses_nan():
    fl = np.load(MASK_FIXTURES / "dsb65_flows.npy")
    fl[2, 3, 4] = np.nan
    with pytest.raises(gpuseg.GpusegError) as e:
        gpuseg.masks_from_flows(fl)
    assert e.value.status == "GPUSEG_FORMAT" and "\n" not in str(e.value)


def test_flows_from_labels_equals_cli_and_round_trips(tmp_path):
    labels = gpuseg.imread(EXAMPLE_LABELS)
    run_cli("flows", EXAMPLE_LABELS, "--unit", "-o", tmp_path / "f.npy")
    flows = gpuseg.flows_from_labels(labels)
    assert flows.shape == (2,) + labels.shape and flows.dtype == np.float32
    assert np.array_equal(flows, np.load(tmp_path / "f.npy"))
    cellprob = np.where(labels > 0, 5.0, -5.0).astype(np.float32)[None]
    masks = gpuseg.masks_from_flows(np.concatenate([5 * flows, cellprob]))
    ap, tp, fp, fn = gpuseg.average_precision(labels, masks)
    assert ap[0] == 1.0


def test_volume_masks_and_flows_match_cellpose():
    """3-D (tests/fixtures/vol, tools/fixtures/make_vol_fixtures.py: a 24 x 48 x 48 crop of
    stardist's mask3d.tif): Cellpose 3.1.1.3's do_3D masks of its noisy network-like flows and of
    the clean flows of the labels, voxel for voxel (as tests/test_vol.c asserts); the labels'
    3-D flows against Cellpose's masks_to_flows (test_vol.c's tolerance: last-bit rounding of
    the float64 sums, a few values off by more than 1e-6 with float pairs)."""
    labels = np.load(VOL_FIXTURES / "labels.npy")
    net = np.load(VOL_FIXTURES / "net.npy")
    got = gpuseg.masks_from_flows(net)
    want = np.load(VOL_FIXTURES / "masks_net.npy")
    assert got.dtype == np.uint16 and got.shape == labels.shape
    assert np.array_equal(got, want)
    ref = np.load(VOL_FIXTURES / "flows.npy")
    flows = gpuseg.flows_from_labels(labels)
    assert flows.shape == (3,) + labels.shape and flows.dtype == np.float32
    err = np.abs(flows - ref)
    assert (err > 1e-6).mean() <= 0.003 and err[err <= 1e-6].max() <= 2.4e-7
    cellprob = np.where(labels > 0, 5.0, -5.0).astype(np.float32)[None]
    clean = gpuseg.masks_from_flows(np.concatenate([5 * ref, cellprob]))
    assert np.array_equal(clean, np.load(VOL_FIXTURES / "masks_clean.npy"))
    with pytest.raises(gpuseg.GpusegError) as e:
        gpuseg.masks_from_flows(net[:3])
    assert "[4, Z, H, W]" in str(e.value)


def test_average_precision_counts():
    truth = np.zeros((40, 40), np.uint16)
    truth[2:12, 2:12] = 1
    truth[20:30, 20:30] = 2
    pred = np.zeros_like(truth)
    pred[2:12, 2:12] = 1          # a perfect match
    pred[0:5, 30:38] = 2          # a false positive; truth 2 is missed
    ap, tp, fp, fn = gpuseg.average_precision(truth, pred)
    assert list(tp) == [1, 1, 1] and list(fp) == [1, 1, 1] and list(fn) == [1, 1, 1]
    assert np.allclose(ap, 1 / 3)
    ap2, tp2, _, _ = gpuseg.average_precision([truth, truth], [pred, truth])
    assert ap2.shape == (2, 3) and np.allclose(ap2[1], 1.0) and tp2[1, 0] == 2
    with pytest.raises(gpuseg.GpusegError) as e:
        gpuseg.average_precision(truth, pred, thresholds=(0.3,))
    assert e.value.status == "GPUSEG_UNSUPPORTED"


def test_shm_publish_open_release():
    lab = gpuseg.imread(EXAMPLE_LABELS)
    name = gpuseg.shm.publish(lab, diameter=9.0)
    assert name.startswith("/gpuseg-")
    with gpuseg.shm.open(name, unlink=True) as seg:
        assert seg.info["state"] == "ready" and seg.info["n_masks"] == int(lab.max())
        assert seg.info["diameter"] == 9.0
        assert np.array_equal(seg.array, lab) and not seg.array.flags.writeable
    with pytest.raises(gpuseg.GpusegError) as e:
        gpuseg.shm.open(name)
    assert e.value.status == "GPUSEG_NOT_FOUND" and name.lstrip("/") in str(e.value)


def test_shm_from_the_command():
    """The hand-off of docs/shm.md: the command publishes, Python maps it by name."""
    out = run_cli("shm", "put", EXAMPLE_LABELS, "--json").stdout
    info = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    labels = gpuseg.shm.read(info["shm"])  # copies, releases and removes it
    assert np.array_equal(labels, gpuseg.imread(EXAMPLE_LABELS))
    with pytest.raises(gpuseg.GpusegError):
        gpuseg.shm.unlink(info["shm"])


def test_struct_sizes_match_the_library():
    # every structure the binding mirrors has the library's size (checked again at load time)
    from gpuseg import _lib

    lib = _lib.lib()
    for cls, name in _lib.STRUCTS.items():
        assert lib.gpuseg_struct_size(name.encode()) == ctypes.sizeof(cls), name
    assert lib.gpuseg_struct_size(b"no_such_struct") == 0


def test_a_grown_structure_is_refused(monkeypatch):
    from gpuseg import _lib

    class Shrunk(ctypes.Structure):
        _fields_ = [("block_size", ctypes.c_uint32)]

    monkeypatch.setitem(_lib.STRUCTS, Shrunk, "gpuseg_blocks_params")
    with pytest.raises(OSError, match="gpuseg_blocks_params is .* bytes in this library"):
        _lib.check_struct_sizes(_lib.lib(), "libgpuseg.so")
