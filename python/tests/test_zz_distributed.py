"""gpuseg.distributed on a LocalCluster of 2 worker processes (1 thread each)."""

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import gpuseg  # noqa: E402
import gpuseg.distributed as gd  # noqa: E402
from conftest import EXAMPLE, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def client():
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
