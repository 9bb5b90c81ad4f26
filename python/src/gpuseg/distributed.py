"""gpuseg on a dask.distributed cluster: one warm Segmenter per worker.

    from dask.distributed import Client, LocalCluster
    import gpuseg.distributed as gd
    with Client(LocalCluster(n_workers=2, threads_per_worker=1)) as client:
        infos = gd.segment_files(paths, client=client, out_dir="out", diameter=17)

`SegmenterPlugin` (a WorkerPlugin) creates a Segmenter (device context + uploaded weights) once
in every worker, at registration and on every worker that joins later; tasks reuse it. Blockwise
segmentation of one large image across workers (zarr in, zarr out) is not implemented yet:
python/README.md says what it needs from the library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from distributed import Client, WorkerPlugin, get_client, get_worker

from . import Segmenter, imread

__all__ = ["SegmenterPlugin", "register", "worker_segmenter", "segment_files"]

PLUGIN_NAME = "gpuseg-segmenter"


class SegmenterPlugin(WorkerPlugin):
    """Creates one Segmenter per worker (model and device as Segmenter's). device None follows
    each worker's $GPUSEG_DEVICE, which is how the GPUs of one node are shared out between
    its workers (python/README.md)."""

    name = PLUGIN_NAME

    def __init__(self, model: Optional[str] = None, device: Optional[str] = None):
        self.model = model
        self.device = device
        self.segmenter: Optional[Segmenter] = None

    def setup(self, worker: Any) -> None:
        self.segmenter = Segmenter(self.model, self.device)

    def teardown(self, worker: Any) -> None:
        if self.segmenter is not None:
            self.segmenter.close()
            self.segmenter = None


def register(client: Client, model: Optional[str] = None, device: Optional[str] = None) -> None:
    """Registers SegmenterPlugin on every worker of client (and on workers that join later)."""
    plugin = SegmenterPlugin(model, device)
    if hasattr(client, "register_plugin"):
        client.register_plugin(plugin, name=PLUGIN_NAME)
    else:  # dask < 2023.9
        client.register_worker_plugin(plugin, name=PLUGIN_NAME)


def worker_segmenter() -> Segmenter:
    """The Segmenter of the worker running this task (register() must have run)."""
    w = get_worker()
    plugin = w.plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.segmenter is None:
        raise RuntimeError("no gpuseg Segmenter on this worker: call "
                           "gpuseg.distributed.register(client) first")
    return plugin.segmenter


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _segment_file(path: str, out_dir: Optional[str], kw: Dict[str, Any]) -> Any:
    seg = worker_segmenter()
    masks, info = seg.segment(imread(path), **kw)
    info = {k: v for k, v in info.items() if k not in ("flows", "style")}
    info["path"] = path
    info["worker"] = get_worker().address
    if out_dir is None:
        return masks, info
    out = Path(out_dir) / (Path(path).stem + "_masks.npy")
    _atomic_save(out, masks)
    info["output"] = str(out)
    return info


def segment_files(paths: Sequence[Union[str, os.PathLike]], client: Optional[Client] = None,
                  model: Optional[str] = None, device: Optional[str] = None,
                  out_dir: Optional[Union[str, os.PathLike]] = None,
                  **segment_kw: Any) -> List[Any]:
    """Segments many image files on the cluster, one task per file, on the workers' warm
    Segmenters (registered here). Files are read by the workers (paths must be visible to
    them). With out_dir, each worker writes STEM_masks.npy there (atomically) and the result
    is a list of info dicts (path, output, n_masks, diameter, timings, worker); without it, a
    list of (masks, info). segment_kw go to Segmenter.segment (diameter, channels, ...).
    Failed tasks are retried by dask (retries=1) and raise their GpusegError here."""
    client = client or get_client()
    register(client, model, device)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    od = None if out_dir is None else str(out_dir)
    futs = [client.submit(_segment_file, os.fspath(p), od, segment_kw, pure=False, retries=1)
            for p in paths]
    return client.gather(futs)
