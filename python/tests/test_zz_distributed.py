"""gpuseg.distributed on a LocalCluster of 2 worker processes (1 thread each): many files
(segment_files) and one image across the workers (segment_zarr): labels equal to the CLI's,
a worker killed mid-run, a failing run leaving nothing behind."""

import os
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

import gpuseg  # noqa: E402
import gpuseg.distributed as gd  # noqa: E402
from conftest import EXAMPLE, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def pinned_conv():
    """One convolution implementation in the workers (started after this) and the CLI: bit-equal
    flows between processes (docs/blockwise.md)."""
    old = os.environ.get("GPUSEG_CONV")
    os.environ["GPUSEG_CONV"] = "direct"
    yield
    if old is None:
        del os.environ["GPUSEG_CONV"]
    else:
        os.environ["GPUSEG_CONV"] = old


@pytest.fixture(scope="module")
def client(pinned_conv):
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_segment_files_equals_cli(client, tmp_path, example):
    big = tmp_path / "tiled.npy"
    np.save(big, np.ascontiguousarray(np.tile(example, (2, 2, 1))))  # 512 x 512 x 4
    paths = [EXAMPLE, big, EXAMPLE]
    infos = gd.segment_files(paths, client=client, out_dir=tmp_path / "out", diameter=17)
    assert [i["path"] for i in infos] == [str(p) for p in paths]
    for p, info in zip(paths, infos):
        cli_out = tmp_path / "cli.npy"
        run_cli("segment", p, "--diameter", "17", "-o", cli_out)
        got = np.load(info["output"])
        assert np.array_equal(got, np.load(cli_out)), p
        assert info["n_masks"] == int(got.max()) > 20
    # in-memory results too, and errors come back as GpusegError
    (masks, info), = gd.segment_files([EXAMPLE], client=client, diameter=17)
    assert np.array_equal(masks, np.load(infos[0]["output"]))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((8, 8), np.float64))
    with pytest.raises(gpuseg.GpusegError):
        gd.segment_files([bad], client=client, diameter=17)


# ---- segment_zarr: one image across the workers ---------------------------------------------

@pytest.fixture(scope="module")
def small(example):
    return np.ascontiguousarray(example[:160, :192, 0])  # 3 x 3 blocks of 64


def _write_zarr(path, a, chunk):
    z = zarr.open_array(store=str(path), mode="w", shape=a.shape, chunks=(chunk, chunk),
                        dtype=a.dtype)
    z[...] = a
    return z


def _leftovers(folder, name):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(f".{name}."))


def test_segment_zarr_equals_cli(client, tmp_path, small):
    src = tmp_path / "in.zarr"
    _write_zarr(src, small, 32)
    np.save(tmp_path / "in.npy", small)
    info = gd.segment_zarr(str(src), tmp_path / "out.zarr", block_size=64, chunk_size=32,
                           diameter=17, client=client)
    out = zarr.open_array(store=str(tmp_path / "out.zarr"), mode="r")
    assert out.chunks == (32, 32) and out.dtype == np.uint32
    got = np.asarray(out[...])
    assert info["n_blocks"] == 9 and info["halo"] == 68 and len(info["workers"]) == 2
    assert info["n_masks"] == int(got.max()) > 20 and info["n_too_big"] == 0
    assert out.attrs["gpuseg"]["n_masks"] == info["n_masks"]
    run_cli("segment", tmp_path / "in.npy", "--diameter", "17", "-o", tmp_path / "whole.npy")
    run_cli("segment", tmp_path / "in.npy", "--diameter", "17", "--block-size", "64",
            "-o", tmp_path / "blocks.npy")
    # the whole-image run: equal, numbering included (keys sorted = first pixel order)
    assert np.array_equal(got, np.load(tmp_path / "whole.npy"))
    # the one-process blockwise run: equal up to renumbering
    blocks = np.load(tmp_path / "blocks.npy")
    pairs = np.unique(np.stack([got.ravel(), blocks.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(got)) == len(np.unique(blocks))
    assert _leftovers(tmp_path, "out.zarr") == []
    # an existing output is refused (unless overwrite=True)
    with pytest.raises(gpuseg.GpusegError, match="exists"):
        gd.segment_zarr(str(src), tmp_path / "out.zarr", block_size=64, diameter=17,
                        client=client)
    with pytest.raises(gpuseg.GpusegError, match="multiple of the chunk"):
        gd.segment_zarr(str(src), tmp_path / "o2.zarr", block_size=64, chunk_size=48,
                        diameter=17, client=client)


def _chunk_reads(marker_dir, loc):
    """Counts (across processes, atomically) the reads of chunk loc; returns this read's
    number (0-based)."""
    n = 0
    while True:
        try:
            fd = os.open(os.path.join(marker_dir, f"read-{loc[0]}-{loc[1]}-{n}"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return n
        except FileExistsError:
            n += 1


def _kill_third_read(block, marker_dir, block_info=None):
    """Chunk (1, 1) is read twice by the plan's two passes; the first block task that reads it
    kills its own worker process."""
    loc = block_info[0]["chunk-location"]
    if tuple(loc) == (1, 1) and _chunk_reads(marker_dir, loc) == 2:
        os._exit(3)
    return block


def _fail_after_plan(block, marker_dir, block_info=None):
    loc = block_info[0]["chunk-location"]
    if tuple(loc) == (1, 1) and _chunk_reads(marker_dir, loc) >= 2:
        raise ValueError("injected read failure")
    return block


def test_segment_zarr_worker_killed(client, tmp_path, small):
    """A worker dies in a block task: dask reruns it on the other worker (and the nanny
    restarts the dead one with its Segmenter): same labels, nothing partial."""
    small = np.ascontiguousarray(small[:128, :128])  # 2 x 2 blocks
    _write_zarr(tmp_path / "in.zarr", small, 64)
    np.save(tmp_path / "in.npy", small)
    marks = tmp_path / "marks"
    marks.mkdir()
    arr = da.from_zarr(str(tmp_path / "in.zarr")).map_blocks(
        _kill_third_read, marker_dir=str(marks), dtype=small.dtype)
    info = gd.segment_zarr(arr, tmp_path / "out.zarr", block_size=64, diameter=17,
                           client=client)
    assert (marks / "read-1-1-2").exists()  # the kill happened
    run_cli("segment", tmp_path / "in.npy", "--diameter", "17", "-o", tmp_path / "whole.npy")
    got = np.asarray(zarr.open_array(store=str(tmp_path / "out.zarr"), mode="r")[...])
    assert np.array_equal(got, np.load(tmp_path / "whole.npy"))
    assert info["n_masks"] == int(got.max())
    assert _leftovers(tmp_path, "out.zarr") == []


def test_segment_zarr_failure_leaves_nothing(client, tmp_path, small):
    small = np.ascontiguousarray(small[:128, :128])
    _write_zarr(tmp_path / "in.zarr", small, 64)
    marks = tmp_path / "marks"
    marks.mkdir()
    arr = da.from_zarr(str(tmp_path / "in.zarr")).map_blocks(
        _fail_after_plan, marker_dir=str(marks), dtype=small.dtype)
    with pytest.raises(ValueError, match="injected read failure"):
        gd.segment_zarr(arr, tmp_path / "out.zarr", block_size=64, diameter=17,
                        client=client)
    assert not (tmp_path / "out.zarr").exists()
    assert _leftovers(tmp_path, "out.zarr") == []


def test_worker_device():
    assert gd.worker_device(None, 0) is None
    assert gd.worker_device("gpu", 3) == "gpu"
    names = (0, 1, 2, "SLURMCluster-3", "tcp://host")
    assert [gd.worker_device(["0", "1"], n) for n in names] == ["0", "1", "0", "1", "0"]
    with pytest.raises(gpuseg.GpusegError):
        gd.worker_device([], 0)


def test_array_source_ome_zarr(tmp_path, small):
    """An OME-Zarr image (c, y, x, one channel): level 0 read region by region, axes from the
    metadata, the reader pickled without its array; t > 1 refused."""
    import pickle

    def ome(path, a, axes):
        g = zarr.open_group(store=str(path), mode="w")
        g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in axes],
                                   "datasets": [{"path": "0"}]}]
        z = zarr.open_array(store=str(path / "0"), mode="w", shape=a.shape, chunks=a.shape,
                            dtype=a.dtype)
        z[...] = a
    ome(tmp_path / "img.ome.zarr", small[None], ["c", "y", "x"])
    src = gd.ArraySource(str(tmp_path / "img.ome.zarr"))
    assert (src.height, src.width, src.channels) == (160, 192, 1)
    src = pickle.loads(pickle.dumps(src))
    reg = src.read(10, 20, 30, 40)
    assert reg.shape == (40, 30, 1) and np.array_equal(reg[..., 0], small[20:60, 10:40])
    ome(tmp_path / "t2.ome.zarr", np.stack([small, small])[:, None], ["t", "c", "y", "x"])
    with pytest.raises(gpuseg.GpusegError, match="axis t has 2 entries"):
        gd.ArraySource(str(tmp_path / "t2.ome.zarr"))
    with pytest.raises(gpuseg.GpusegError, match="not a readable zarr"):
        gd.ArraySource(str(tmp_path / "missing.zarr"))


def _mark_segmenter(dask_worker):
    dask_worker.plugins[gd.PLUGIN_NAME].segmenter._test_mark = True


def _marked(dask_worker):
    return getattr(dask_worker.plugins[gd.PLUGIN_NAME].segmenter, "_test_mark", False)


def test_register_keeps_warm_segmenters(client):
    gd.register(client)
    client.run(_mark_segmenter)
    gd.register(client)  # the same model and device: the same Segmenters
    assert list(client.run(_marked).values()) == [True, True]
    gd.register(client, force=True)
    assert list(client.run(_marked).values()) == [False, False]
