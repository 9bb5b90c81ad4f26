"""Segmenter: parity with the `gpuseg segment` command, info, errors, progress and cancel."""

import signal
import threading

import numpy as np
import pytest

import gpuseg
from conftest import EXAMPLE, REPO, run_cli


def test_segment_equals_cli_at_diameter_17(segmenter, example, tmp_path):
    out = tmp_path / "x.npy"
    run_cli("segment", EXAMPLE, "--diameter", "17", "-o", out)
    cli = np.load(out)
    masks, info = segmenter.segment(example, diameter=17)
    assert masks.dtype == cli.dtype == np.uint16
    assert masks.shape == example.shape[:2]
    assert np.array_equal(masks, cli)
    assert info["n_masks"] == int(cli.max()) > 20
    assert info["diameter"] == 17.0 and info["passes"] == 1
    assert info["timings"]["total"] >= info["timings"]["net"] > 0


def test_segment_estimated_diameter_equals_cli_default(segmenter, example, tmp_path):
    out = tmp_path / "y.npy"
    run_cli("segment", EXAMPLE, "-o", out)
    masks, info = segmenter.segment(example)  # diameter None: estimated, as the command does
    assert np.array_equal(masks, np.load(out))
    assert info["diameter_estimated"] and info["passes"] >= 2
    assert 5 < info["diameter"] < 20


def test_segment_float32_grey_and_flows(segmenter, example):
    grey = example[..., :3].astype(np.float32).mean(axis=2)
    masks, info = segmenter.segment(grey, diameter=17, return_flows=True, return_style=True)
    assert masks.shape == grey.shape and info["n_masks"] > 20
    flows = info["flows"]
    assert flows.shape == (3,) + grey.shape and flows.dtype == np.float32
    assert info["style"].shape == (segmenter.nbase[4],)
    # the returned flows give the same masks through masks_from_flows (same niter)
    again = segmenter.masks_from_flows(flows, niter=info["niter"])
    assert np.array_equal(again, masks)


def test_blockwise_matches_whole_up_to_renumbering(segmenter, example):
    whole, _ = segmenter.segment(example, diameter=17)
    blocks, info = segmenter.segment(example, diameter=17, block_size=128)
    assert info["n_blocks"] == 4
    pairs = set(zip(whole.ravel().tolist(), blocks.ravel().tolist()))
    fwd = {}
    for a, b in pairs:
        assert fwd.setdefault(a, b) == b, f"label {a} maps to {fwd[a]} and {b}"
    assert len(set(fwd.values())) == len(fwd)


def one_line(e):
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_bad_dtype_raises(segmenter):
    with pytest.raises(gpuseg.GpusegError) as e:
        segmenter.segment(np.zeros((64, 64), np.float64), diameter=17)
    assert "float64" in one_line(e)
    assert e.value.status == "GPUSEG_UNSUPPORTED"


def test_bad_shape_raises(segmenter):
    with pytest.raises(gpuseg.GpusegError) as e:
        segmenter.segment(np.zeros((64, 64, 7), np.uint8), diameter=17)
    assert "64, 64, 7" in one_line(e)


def test_nan_image_raises_library_message(segmenter):
    img = np.random.default_rng(0).random((96, 96), dtype=np.float32)
    img[5, 7] = np.nan
    with pytest.raises(gpuseg.GpusegError) as e:
        segmenter.segment(img, diameter=17)
    assert "NaN" in one_line(e)
    assert e.value.status.startswith("GPUSEG_")
    # the segmenter still works after a failed call
    m, _ = segmenter.segment(np.nan_to_num(img), diameter=17)
    assert m.shape == img.shape


def test_missing_model_raises(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(gpuseg.GpusegError) as e:
        gpuseg.Segmenter(model=str(missing))
    assert str(missing) in one_line(e)
    assert e.value.status == "GPUSEG_NOT_FOUND"


def test_missing_env_model_raises(monkeypatch):
    monkeypatch.setenv("GPUSEG_MODEL", "no_such_model_name")
    with pytest.raises(gpuseg.GpusegError) as e:
        gpuseg.Segmenter()
    assert one_line(e).startswith("GPUSEG_MODEL=no_such_model_name: ")


def test_bad_channels_raise_library_message(segmenter, example):
    with pytest.raises(gpuseg.GpusegError) as e:
        segmenter.segment(example[..., 0], diameter=17, channels=(7, 0))
    one_line(e)
    assert e.value.status == "GPUSEG_INVALID_ARGUMENT"


def test_progress_reaches_python(segmenter, example):
    seen = []
    segmenter.segment(example, diameter=17, progress=lambda *a: seen.append(a))
    stages = {s for s, _, _, _ in seen}
    assert "network" in stages and "masks" in stages, stages
    fr = [f for _, _, _, f in seen]
    assert all(0.0 <= f <= 1.0 for f in fr)
    assert fr == sorted(fr)


def test_progress_exception_stops_the_call(segmenter, example):
    class Stop(Exception):
        pass

    def cb(stage, done, total, fraction):
        raise Stop(stage)

    with pytest.raises(Stop):
        segmenter.segment(example, diameter=17, progress=cb)
    m, _ = segmenter.segment(example, diameter=17)  # the cancel flag was withdrawn
    assert m.max() > 0


@pytest.fixture
def sigint_raises():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test: a process started in the
    background by a non-interactive shell inherits SIGINT ignored, and Python then installs no
    handler, so the signal these tests send would be dropped."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_keyboard_interrupt_cancels(segmenter, example, sigint_raises):
    """SIGINT during a call (sent to the main thread from the first progress report, so it can
    land while the worker thread is still being started) raises KeyboardInterrupt, stops the
    device work before its masks stage (the stages reported say where it stopped: no timing),
    leaves no call running on the context, and the segmenter is reusable."""
    big = np.tile(example, (4, 4, 1))
    stages = []

    def cb(stage, done, total, fraction):
        stages.append(stage)
        if len(stages) == 1:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    m, info = segmenter.segment(big, diameter=17)
    with pytest.raises(KeyboardInterrupt):
        segmenter.segment(big, diameter=17, progress=cb)
    assert stages[0] == "prep" and "masks" not in stages and "done" not in stages, stages
    again, _ = segmenter.segment(big, diameter=17)
    assert np.array_equal(again, m) and info["n_masks"] > 100


def test_segment_after_cancel_is_unchanged(segmenter, example, sigint_raises):
    """A cancelled call leaves nothing behind: the next call gives the same labels."""
    big = np.tile(example, (4, 4, 1))
    m, _ = segmenter.segment(big, diameter=17)

    def cb(stage, done, total, fraction):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        segmenter.segment(big, diameter=17, progress=cb)
    again, _ = segmenter.segment(big, diameter=17)
    assert np.array_equal(again, m)


def test_segment_volume_equals_cli_do3d(segmenter, tmp_path):
    """segment_volume (gpuseg_segment_volume) gives `gpuseg segment --do-3d`'s labels on the
    committed 12 x 61 x 57 stack (tests/fixtures/do3d holds Cellpose's own)."""
    stack = gpuseg.imread(REPO / "tests" / "fixtures" / "stack" / "img3d_crop.tif")
    assert stack.shape == (12, 61, 57)
    masks, info = segmenter.segment_volume(stack, diameter=11, return_flows=True)
    assert masks.shape == stack.shape and info["flows"].shape == (4, 12, 61, 57)
    out = tmp_path / "v.npy"
    run_cli("segment", REPO / "tests" / "fixtures" / "stack" / "img3d_crop.tif", "--model",
            gpuseg.default_model_path(), "--diameter", "11", "--do-3d", "--quiet", "-o", out)
    np.testing.assert_array_equal(masks, np.load(out))
    cellpose = gpuseg.imread(REPO / "tests" / "fixtures" / "do3d" / "a_masks.tif")
    assert info["n_masks"] == cellpose.max()
    with pytest.raises(gpuseg.GpusegError, match="Z stack"):
        segmenter.segment_volume(stack[:1], diameter=11)


def test_segment_stack_equals_cellpose_stitch(segmenter):
    """segment_stack (gpuseg_segment_stack) gives Cellpose's eval(stitch_threshold=0.5) labels
    on the committed 12 x 61 x 57 stack (tests/fixtures/stack/cellpose_stitch.tif, made by
    tools/fixtures/make_stack_fixtures.py), as `gpuseg segment --stitch-threshold` does."""
    stack = gpuseg.imread(REPO / "tests" / "fixtures" / "stack" / "img3d_crop.tif")
    masks, info = segmenter.segment_stack(stack, 0.5, diameter=11, return_flows=True)
    cellpose = gpuseg.imread(REPO / "tests" / "fixtures" / "stack" / "cellpose_stitch.tif")
    assert masks.shape == cellpose.shape == (12, 61, 57)
    np.testing.assert_array_equal(masks.astype(np.uint32), cellpose.astype(np.uint32))
    assert info["n_masks"] == cellpose.max() and info["flows"].shape == (12, 3, 61, 57)
    with pytest.raises(gpuseg.GpusegError, match="stitch_threshold"):
        segmenter.segment_stack(stack, 0.0, diameter=11)
