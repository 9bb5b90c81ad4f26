"""gpuseg on a dask.distributed cluster: one warm Segmenter per worker.

    from dask.distributed import Client, LocalCluster
    import gpuseg.distributed as gd
    with Client(LocalCluster(n_workers=2, threads_per_worker=1)) as client:
        infos = gd.segment_files(paths, client=client, out_dir="out", diameter=17)
        info = gd.segment_zarr("slide.ome.zarr", "labels.zarr", block_size=1024,
                               diameter=17, client=client)

`SegmenterPlugin` (a WorkerPlugin) creates a Segmenter (device context + uploaded weights) once
in every worker, at registration and on every worker that joins later; tasks reuse it.

`segment_zarr` segments one large image (zarr, OME-Zarr level 0, or a dask array) block by
block across the workers with the library's blockwise rule (docs/blockwise.md): the global plan
(percentiles) once, then every block on its own, its core's masks keyed by their global first
pixel, then a relabel pass; the output appears only when complete.
"""

from __future__ import annotations

import ctypes as C
import inspect
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from distributed import Client, WorkerPlugin, as_completed, get_client, get_worker, wait

from . import GpusegError, ProgressCallback, Segmenter, _lib, _numpy_to_image, imread

__all__ = ["SegmenterPlugin", "register", "worker_segmenter", "worker_device", "segment_files",
           "ArraySource", "plan_info",
           "plan_blocks", "segment_block", "segment_zarr"]

PLUGIN_NAME = "gpuseg-segmenter"


DeviceSpec = Optional[Union[str, int, Sequence[Union[str, int]]]]


def worker_device(device: DeviceSpec, worker_name: Any) -> Optional[Union[str, int]]:
    """The device a worker uses: device itself (None: the worker's $GPUSEG_DEVICE), or, for a
    list, entry i % len(list) where i is the worker's name (LocalCluster names its workers
    0, 1, ...) or the number it ends with (0 if none): one GPU per worker on a multi-GPU node."""
    if device is None or isinstance(device, (str, int)):
        return device
    devs = list(device)
    if not devs:
        raise GpusegError("device: an empty list", "GPUSEG_INVALID_ARGUMENT")
    if isinstance(worker_name, int):
        i = worker_name
    else:
        digits = str(worker_name)[len(str(worker_name).rstrip("0123456789")):]
        i = int(digits) if digits else 0
    return devs[i % len(devs)]


class SegmenterPlugin(WorkerPlugin):
    """Creates one Segmenter per worker (model and device as Segmenter's). device None follows
    each worker's $GPUSEG_DEVICE; a list gives worker i its entry i (worker_device): the two
    ways to share out the GPUs of one node between its workers (python/README.md)."""

    name = PLUGIN_NAME

    def __init__(self, model: Optional[str] = None, device: DeviceSpec = None):
        self.model = model
        self.device = device
        self.segmenter: Optional[Segmenter] = None

    def setup(self, worker: Any) -> None:
        self.segmenter = Segmenter(self.model, worker_device(self.device, worker.name))

    def teardown(self, worker: Any) -> None:
        if self.segmenter is not None:
            self.segmenter.close()
            self.segmenter = None


def register(client: Client, model: Optional[str] = None, device: DeviceSpec = None,
             force: bool = False) -> None:
    """Registers SegmenterPlugin on every worker of client (and on workers that join later).
    A second call from this client with the same model and device keeps the workers'
    Segmenters (force=True makes new ones)."""
    key = (model, repr(device))
    if not force and getattr(client, "_gpuseg_plugin", None) == key:
        return
    plugin = SegmenterPlugin(model, device)
    if hasattr(client, "register_plugin"):
        client.register_plugin(plugin, name=PLUGIN_NAME)
    else:  # dask < 2023.9
        client.register_worker_plugin(plugin, name=PLUGIN_NAME)
    client._gpuseg_plugin = key


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
                  model: Optional[str] = None, device: DeviceSpec = None,
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


# ---- one large image across workers ------------------------------------------------------------

def _region_index(ndim: int, yx: Tuple[int, int], c_axis: Optional[int],
                  y: slice, x: slice) -> Tuple[Any, ...]:
    idx: List[Any] = [0] * ndim
    idx[yx[0]], idx[yx[1]] = y, x
    if c_axis is not None:
        idx[c_axis] = slice(None)
    return tuple(idx)


class ArraySource:
    """A 2-D image read region by region: a zarr array (or its path), the level 0 of an OME-Zarr
    image (the group's path), or a dask array. Pickles small (a path, or the array object), so
    that every worker reads only the regions it needs.

    Axes: an OME-Zarr image's come from its metadata (y, x; c as channels; t and z must have
    size 1). A 2-D array is y, x; a 3-D one has a channel axis, channel_axis (default: the last
    if it has at most 4 entries, else the first). Samples other than uint8, uint16 and float32
    are read as float32."""

    def __init__(self, data: Any, channel_axis: Optional[int] = None):
        self._path: Optional[str] = None
        self._component: Optional[str] = None
        self._arr: Any = None
        axes: Optional[List[str]] = None
        if isinstance(data, (str, os.PathLike)):
            import zarr
            self._path = os.fspath(data)
            try:
                node = zarr.open(store=self._path, mode="r")
            except Exception as e:
                raise GpusegError(f"{self._path}: not a readable zarr array or group ({e})",
                                  "GPUSEG_FORMAT") from None
            if not hasattr(node, "shape"):
                attrs = dict(node.attrs)
                ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
                if not ms:
                    raise GpusegError(f"{self._path}: a zarr group without OME-Zarr "
                                      "multiscales metadata (give the array's path)",
                                      "GPUSEG_FORMAT")
                self._component = str(ms[0]["datasets"][0]["path"])
                axes = [a["name"] if isinstance(a, dict) else str(a)
                        for a in ms[0].get("axes", [])] or None
                node = node[self._component]
            self._arr = node
        else:
            self._arr = data
        shape = tuple(int(n) for n in self._arr.shape)
        self.dtype = np.dtype(self._arr.dtype)
        self._is_dask = hasattr(self._arr, "dask") and hasattr(self._arr, "compute")
        where = self._path or type(self._arr).__name__
        if axes is not None:
            if len(axes) != len(shape) or "y" not in axes or "x" not in axes:
                raise GpusegError(f"{where}: OME-Zarr axes {axes} do not match shape {shape}",
                                  "GPUSEG_FORMAT")
            for name, n in zip(axes, shape):
                if name not in ("y", "x", "c") and n != 1:
                    raise GpusegError(f"{where}: axis {name} has {n} entries; segment_zarr "
                                      "takes one 2-D plane (t and z of size 1)",
                                      "GPUSEG_UNSUPPORTED")
            self._yx = (axes.index("y"), axes.index("x"))
            self._c = axes.index("c") if "c" in axes else None
        elif len(shape) == 2:
            self._yx, self._c = (0, 1), None
        elif len(shape) == 3:
            c = channel_axis if channel_axis is not None else (2 if shape[2] <= 4 else 0)
            c %= 3
            self._c = c
            self._yx = tuple(a for a in range(3) if a != c)  # type: ignore[assignment]
        else:
            raise GpusegError(f"{where}: shape {shape} is not y, x or y, x and channels",
                              "GPUSEG_INVALID_ARGUMENT")
        self._ndim = len(shape)
        self.height, self.width = shape[self._yx[0]], shape[self._yx[1]]
        self.channels = 1 if self._c is None else shape[self._c]
        if not 1 <= self.channels <= 4:
            raise GpusegError(f"{where}: {self.channels} channels (at most 4: select them "
                              "first)", "GPUSEG_UNSUPPORTED")
        self.description = where + (f"/{self._component}" if self._component else "")

    def __getstate__(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        if self._path is not None:
            d["_arr"] = None  # reopened by the worker
        return d

    def _array(self) -> Any:
        if self._arr is None:
            import zarr
            node = zarr.open(store=self._path, mode="r")
            self._arr = node[self._component] if self._component else node
        return self._arr

    def read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The region of w x h pixels at (x0, y0): h x w (x channels), uint8/uint16/float32."""
        idx = _region_index(self._ndim, self._yx, self._c, slice(y0, y0 + h),
                            slice(x0, x0 + w))
        a = self._array()[idx]
        if self._is_dask:
            a = a.compute(scheduler="sync")
        a = np.asarray(a)
        if self._c is not None:
            kept = [ax for ax in range(self._ndim) if ax in (self._c,) + tuple(self._yx)]
            a = np.moveaxis(a, kept.index(self._c), -1)
        if a.dtype not in (np.uint8, np.uint16, np.float32):
            a = a.astype(np.float32)
        return a


class _Source:
    """gpuseg_block_source over read(x0, y0, w, h) -> ndarray. An exception in read stops the
    library call (status GPUSEG_IO) and is kept in .error to be re-raised."""

    def __init__(self, read: Callable[[int, int, int, int], np.ndarray], height: int,
                 width: int):
        self._read = read
        self.error: Optional[BaseException] = None
        self._cb = _lib.REGION_READ_FN(self._on_read)
        self.struct = _lib.BlockSource(width=width, height=height, read=self._cb, user=None)

    def _on_read(self, user: Any, x0: int, y0: int, w: int, h: int, out: Any) -> int:
        try:
            im, keep = _numpy_to_image(self._read(x0, y0, w, h))
            if (im.height, im.width) != (h, w):
                raise GpusegError(f"region {w}x{h} at ({x0}, {y0}): read gave "
                                  f"{im.width}x{im.height}", "GPUSEG_FORMAT")
            p = C.POINTER(_lib.Image)()
            st = _lib.lib().gpuseg_image_create(w, h, im.channels, 1, im.dtype, C.byref(p))
            if st != _lib.OK:
                return st
            C.memmove(p.contents.data, keep.ctypes.data, keep.nbytes)
            out[0] = p
            return _lib.OK
        except BaseException as e:  # re-raised by _run
            self.error = e
            return -3  # GPUSEG_IO

    def run(self, seg: Segmenter, fn: Callable[[], int],
            progress: Optional[ProgressCallback] = None) -> None:
        try:
            seg.ctx._call(fn, progress)
        except GpusegError:
            if self.error is not None:
                raise self.error from None
            raise


# the keyword arguments of Segmenter.segment that become gpuseg_segment_params, with its defaults
_PARAM_KEYS = ("normalize", "flow_threshold", "cellprob_threshold", "min_size", "niter",
               "max_size_fraction", "invert", "tile_overlap", "batch_size")
_PARAM_DEFAULTS = {k: inspect.signature(Segmenter.segment).parameters[k].default
                   for k in _PARAM_KEYS}


def _segment_params(seg: Segmenter, diameter: Any, channels: Sequence[int],
                    kw: Dict[str, Any]) -> _lib.SegmentParams:
    unknown = sorted(set(kw) - set(_PARAM_KEYS))
    if unknown:
        raise TypeError(f"unknown segmentation arguments {unknown} (blockwise runs take "
                        f"{', '.join(_PARAM_KEYS)})")
    if diameter is None:
        raise GpusegError("blockwise segmentation needs a diameter (a number or 'model')",
                          "GPUSEG_UNSUPPORTED")
    a = {k: kw.get(k, _PARAM_DEFAULTS[k]) for k in _PARAM_KEYS}
    a["invert"] = int(a["invert"])
    return seg._params(diameter, channels, **a)


def plan_blocks(seg: Segmenter, read: Callable[[int, int, int, int], np.ndarray], height: int,
                width: int, block_size: int = 1024, halo: int = 0,
                diameter: Union[float, str] = "model", channels: Sequence[int] = (0, 0),
                progress: Optional[ProgressCallback] = None, **segment_kw: Any) -> bytes:
    """The global plan of a blockwise run (gpuseg_blocks_plan_compute): the percentiles by
    two streaming passes over the image, read(x0, y0, w, h) one block at a time, the rescale
    and the halo. Returns the plan as bytes, for segment_block on any worker."""
    p = _segment_params(seg, diameter, channels, segment_kw)
    L = _lib.lib()
    bp = _lib.BlocksParams()
    L.gpuseg_blocks_params_default(C.byref(bp))
    bp.block_size, bp.halo = int(block_size), int(halo)
    plan = _lib.BlocksPlan()
    src = _Source(read, height, width)
    net = seg._net
    src.run(seg, lambda: L.gpuseg_blocks_plan_compute(seg.ctx.handle, net,
                                                      C.byref(src.struct), C.byref(p),
                                                      C.byref(bp), C.byref(plan)), progress)
    return C.string_at(C.addressof(plan), C.sizeof(plan))


def _plan_struct(plan: bytes) -> _lib.BlocksPlan:
    if len(plan) != C.sizeof(_lib.BlocksPlan):
        raise GpusegError(f"a blocks plan has {C.sizeof(_lib.BlocksPlan)} bytes, not "
                          f"{len(plan)}", "GPUSEG_INVALID_ARGUMENT")
    return _lib.BlocksPlan.from_buffer_copy(plan)


def plan_info(plan: bytes) -> Dict[str, Any]:
    """The plan's numbers: image size, block size, halo, blocks, diameter, rescale, niter,
    percentiles (norm_lo, norm_hi per network channel)."""
    P = _plan_struct(plan)
    return {"width": P.width, "height": P.height, "block_size": P.block_size, "halo": P.halo,
            "n_blocks_x": P.n_blocks_x, "n_blocks_y": P.n_blocks_y,
            "n_blocks": P.n_blocks_x * P.n_blocks_y, "diameter": P.diameter,
            "rescale": P.rescale, "niter": P.niter, "n_tiles": P.n_tiles,
            "norm_lo": [P.norm[0], P.norm[4]], "norm_hi": [P.norm[1], P.norm[5]],
            "seconds_percentiles": P.seconds_percentiles}


def segment_block(seg: Segmenter, read: Callable[[int, int, int, int], np.ndarray],
                  plan: bytes, k: int, progress: Optional[ProgressCallback] = None
                  ) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Block k of the plan (gpuseg_segment_block): reads its window through read and returns
    (keys, info): keys uint64 h x w over the block's core, the mask key of each pixel (global
    first pixel y * width + x, plus 1; 0 background), info its core (x0, y0, width, height),
    n_masks, n_too_big, n_tiles_run, seconds. Keys of all blocks mapped to 1..n in increasing
    order give the labels of the whole blockwise run."""
    P = _plan_struct(plan)
    L = _lib.lib()
    x0, y0, w, h = (C.c_uint32() for _ in range(4))
    if L.gpuseg_blocks_plan_core(C.byref(P), k, C.byref(x0), C.byref(y0), C.byref(w),
                                 C.byref(h)) != _lib.OK:
        raise GpusegError(L.gpuseg_last_error().decode(), "GPUSEG_INVALID_ARGUMENT")
    keys = np.zeros((h.value, w.value), np.uint64)
    r = _lib.BlockResult()
    src = _Source(read, P.height, P.width)
    net = seg._net
    kp = keys.ctypes.data_as(C.POINTER(C.c_uint64))
    src.run(seg, lambda: L.gpuseg_segment_block(seg.ctx.handle, net, C.byref(src.struct),
                                                C.byref(P), k, kp, C.byref(r)), progress)
    return keys, {"x0": r.x0, "y0": r.y0, "width": r.width, "height": r.height,
                  "n_masks": r.n_masks, "n_too_big": r.n_too_big,
                  "n_tiles_run": int(r.n_tiles_run), "seconds": r.seconds}


def _create_zarr(path: str, shape: Tuple[int, int], chunk: int, dtype: Any) -> Any:
    import zarr
    return zarr.open_array(store=path, mode="w-", shape=shape, chunks=(chunk, chunk),
                           dtype=dtype, fill_value=0)


def _open_zarr(path: str) -> Any:
    import zarr
    return zarr.open_array(store=path, mode="r+")


def _plan_task(source: ArraySource, block_size: int, halo: int, diameter: Any,
               channels: Sequence[int], kw: Dict[str, Any]) -> bytes:
    return plan_blocks(worker_segmenter(), source.read, source.height, source.width,
                       block_size, halo, diameter, channels, **kw)


def _block_task(k: int, source: ArraySource, plan: bytes, keys_path: str) -> Dict[str, Any]:
    keys, info = segment_block(worker_segmenter(), source.read, plan, k)
    # opened just before the write: a run that failed elsewhere and removed the folder makes
    # this fail instead of recreating a part of it
    arr = _open_zarr(keys_path)
    y0, x0 = info["y0"], info["x0"]
    arr[y0:y0 + keys.shape[0], x0:x0 + keys.shape[1]] = keys
    info["keys"] = np.unique(keys[keys > 0])
    info["worker"] = get_worker().address
    return info


def _relabel_task(k: int, plan: bytes, keys_path: str, out_path: str,
                  table: np.ndarray) -> int:
    P = _plan_struct(plan)
    bs = P.block_size
    y0, x0 = (k // P.n_blocks_x) * bs, (k % P.n_blocks_x) * bs
    y1, x1 = min(y0 + bs, P.height), min(x0 + bs, P.width)
    keys = np.asarray(_open_zarr(keys_path)[y0:y1, x0:x1])
    out = _open_zarr(out_path)
    lab = np.zeros(keys.shape, out.dtype)
    fg = keys > 0
    lab[fg] = (np.searchsorted(table, keys[fg]) + 1).astype(out.dtype)
    out[y0:y1, x0:x1] = lab
    return int(fg.sum())


def _settle(client: Client, futs: List[Any]) -> List[Any]:
    """Waits until every future has finished or failed (so that no task still writes), then
    gathers (raising the first error)."""
    try:
        wait(futs)
    except BaseException:
        client.cancel(futs)
        raise
    return client.gather(futs)


def segment_zarr(input: Any, output: Union[str, os.PathLike], block_size: int = 1024,
                 halo: int = 0, diameter: Union[float, str] = "model",
                 channels: Sequence[int] = (0, 0), *, client: Optional[Client] = None,
                 model: Optional[str] = None, device: DeviceSpec = None,
                 chunk_size: Optional[int] = None, channel_axis: Optional[int] = None,
                 overwrite: bool = False,
                 progress: Optional[Callable[[str, int, int], Any]] = None,
                 **segment_kw: Any) -> Dict[str, Any]:
    """Segments one large 2-D image on the cluster, block by block, into a zarr array of labels.

    input: a zarr array or its path, an OME-Zarr image's path (level 0 is segmented), or a
      dask array (its graph runs on the workers, region by region: build it from a lazy reader
      such as dask.array.from_zarr); read by the workers only, one window at a time.
    output: a local path (a folder visible to the client and the workers) where a zarr array
      of uint32 labels (uint64 beyond 2^32 - 1 masks), chunked chunk_size (default
      block_size, which must be a multiple of it), appears when the run is complete.
    block_size, halo, diameter ("model" or pixels), channels, segment_kw (flow_threshold,
      cellprob_threshold, min_size, niter, normalize, invert, tile_overlap, batch_size): as
      `gpuseg segment --block-size` (docs/blockwise.md).

    The run: (1) one task computes the plan (the whole image's percentiles by two passes that
    read it block by block); (2) one task per block segments its window on the worker's warm
    Segmenter and writes its core's mask keys (global first pixel + 1, uint64) to a temporary
    zarr next to output, whole chunks only; (3) the client sorts the keys the blocks found
    (8 bytes per mask) and one task per block maps its keys to 1..n into a second temporary
    zarr; (4) that one is renamed to output (atomic on one file system). Labels equal
    `gpuseg segment --block-size` up to renumbering, and the whole-image run's exactly
    (numbering too) when no mask is bigger than the halo. A task whose worker dies is rerun
    by dask elsewhere (tasks are idempotent: a block rewrites the same chunks); a failed run
    removes its temporaries and leaves output absent (or as it was). progress(stage, done,
    total) is called on the client as blocks finish. Returns an info dict."""
    client = client or get_client()
    unknown = sorted(set(segment_kw) - set(_PARAM_KEYS))
    if unknown:
        raise TypeError(f"segment_zarr: unknown arguments {unknown}")
    src = input if isinstance(input, ArraySource) else ArraySource(input, channel_axis)
    bs = int(block_size)
    chunk = int(chunk_size) if chunk_size else bs
    if chunk < 1 or bs % chunk:
        raise GpusegError(f"block size {bs} is not a multiple of the chunk size {chunk}",
                          "GPUSEG_INVALID_ARGUMENT")
    out = Path(output).absolute()
    if out.exists() and not overwrite:
        raise GpusegError(f"{out}: exists (pass overwrite=True to replace it)",
                          "GPUSEG_INVALID_ARGUMENT")
    if not out.parent.is_dir():
        raise GpusegError(f"{out.parent}: no such folder", "GPUSEG_NOT_FOUND")
    register(client, model, device)
    t0 = time.perf_counter()
    plan = client.submit(_plan_task, src, bs, int(halo), diameter, tuple(channels),
                         segment_kw, pure=False, retries=1).result()
    info = plan_info(plan)
    nb = info["n_blocks"]
    t1 = time.perf_counter()
    tag = uuid.uuid4().hex[:12]
    keys_path = str(out.with_name(f".{out.name}.keys-{tag}"))
    part_path = str(out.with_name(f".{out.name}.partial-{tag}"))
    old_path = str(out.with_name(f".{out.name}.old-{tag}"))
    try:
        _create_zarr(keys_path, (src.height, src.width), chunk, np.uint64)
        futs = client.map(_block_task, range(nb), source=src, plan=plan, keys_path=keys_path,
                          pure=False, retries=1)
        if progress is not None:
            for done, _ in enumerate(as_completed(futs), 1):
                progress("blocks", done, nb)
        blocks = _settle(client, futs)
        t2 = time.perf_counter()
        table = np.unique(np.concatenate([b["keys"] for b in blocks] +
                                         [np.zeros(0, np.uint64)]))
        n = int(table.size)
        _create_zarr(part_path, (src.height, src.width), chunk,
                     np.uint32 if n < 2**32 else np.uint64)
        tf = client.scatter(table, broadcast=True)
        _settle(client, client.map(_relabel_task, range(nb), plan=plan, keys_path=keys_path,
                                   out_path=part_path, table=tf, pure=False, retries=1))
        if progress is not None:
            progress("relabel", nb, nb)
        info.update(n_masks=n, n_too_big=int(sum(b["n_too_big"] for b in blocks)),
                    n_tiles_run=int(sum(b["n_tiles_run"] for b in blocks)),
                    input=src.description, output=str(out), chunk_size=chunk,
                    workers=sorted({b["worker"] for b in blocks}))
        info["seconds"] = {"plan": t1 - t0, "blocks": t2 - t1,
                           "relabel": time.perf_counter() - t2,
                           "total": time.perf_counter() - t0}
        attrs = {k: v for k, v in info.items() if k != "workers"}
        _open_zarr(part_path).attrs["gpuseg"] = attrs
        if out.exists():
            os.rename(out, old_path)
        os.rename(part_path, out)
    finally:
        for p in (keys_path, part_path, old_path):
            shutil.rmtree(p, ignore_errors=True)
    return info
