"""gpuseg from Python: Cellpose 3.1 segmentation on OpenCL through libgpuseg.

    import gpuseg
    seg = gpuseg.Segmenter()                  # warm device context + the bundled nuclei model
    masks, info = seg.segment(img, diameter=17)

A thin ctypes binding over the library's public C API (include/gpuseg/*.h): no Python C
extension, no Python in the library. Errors raise GpusegError with the library's one-line
message; long calls release the GIL, report progress to a callback and stop on Ctrl-C
(KeyboardInterrupt cancels the device work through gpuseg_ctx_cancel).
"""

from __future__ import annotations

import ctypes as C
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib
from ._lib import PACKAGE_DIR

__all__ = ["GpusegError", "Context", "Segmenter", "masks_from_flows", "flows_from_labels",
           "average_precision", "imread", "version", "default_model_path", "cli_path",
           "DEFAULT_MODEL"]

DEFAULT_MODEL = "nuclei_gpuseg_v2"

ProgressCallback = Callable[[str, int, int, float], Any]


class GpusegError(RuntimeError):
    """A libgpuseg call failed. str(e) is the library's one-line message; e.status is the
    status name ("GPUSEG_FORMAT", ...)."""

    def __init__(self, message: str, status: str = "GPUSEG_INVALID_ARGUMENT"):
        super().__init__(message)
        self.status = status


def version() -> str:
    """The library's version ("MAJOR.MINOR.PATCH")."""
    return _lib.lib().gpuseg_version().decode()


def cli_path() -> str:
    """The `gpuseg` command installed with this package (same build as the library)."""
    return str(PACKAGE_DIR / "bin" / "gpuseg")


def _raise(status: int, message: Optional[bytes]) -> None:
    L = _lib.lib()
    name = L.gpuseg_status_name(status).decode()
    text = (message or b"").decode(errors="replace") or name
    raise GpusegError(text, name)


def _check(status: int, ctx: Optional[int] = None) -> None:
    """Raises GpusegError for a failed status, with the message of this thread (or of ctx)."""
    if status == _lib.OK:
        return
    L = _lib.lib()
    msg = L.gpuseg_ctx_last_error(ctx) if ctx else None
    if not msg:
        msg = L.gpuseg_last_error()
    _raise(status, msg)


def default_model_path(model: Optional[str] = None) -> str:
    """Finds a model file as the `gpuseg segment` command does: `model` (a path, or a name looked
    up in the package's bundled models and then in Cellpose's model folder), else
    $GPUSEG_MODEL, else the bundled DEFAULT_MODEL. Raises GpusegError naming every place
    tried."""
    env = os.environ.get("GPUSEG_MODEL")
    want = model if model is not None else (env if env else DEFAULT_MODEL)
    dirs = [str(PACKAGE_DIR / "share" / "gpuseg" / "models")]
    arr = (C.c_char_p * len(dirs))(*[d.encode() for d in dirs])
    buf = C.create_string_buffer(4096)
    L = _lib.lib()
    st = L.gpuseg_model_find(os.fsencode(str(want)), arr, len(dirs), buf, len(buf))
    if st != _lib.OK:
        prefix = ("" if model is not None else
                  f"GPUSEG_MODEL={env}: " if env else "the bundled model is missing: ")
        _raise(st, prefix.encode() + (L.gpuseg_last_error() or b""))
    return buf.value.decode()


def imread(path: Union[str, os.PathLike]) -> np.ndarray:
    """Reads an image file as the `gpuseg` command does (PNG, JPEG, BMP, PNM, GIF, TIFF, .npy):
    H x W (one channel) or H x W x C, stored dtype kept; several pages give P x H x W (x C)."""
    L = _lib.lib()
    out = C.POINTER(_lib.Image)()
    _check(L.gpuseg_image_read(os.fsencode(str(path)), C.byref(out)))
    try:
        return _image_to_numpy(out.contents)
    finally:
        L.gpuseg_image_free(out)


_NP_OF_DTYPE = {_lib.DTYPE_U8: np.uint8, _lib.DTYPE_U16: np.uint16, _lib.DTYPE_U32: np.uint32,
                _lib.DTYPE_I32: np.int32, _lib.DTYPE_F32: np.float32}
_DTYPE_OF_NP = {np.dtype(np.uint8): _lib.DTYPE_U8, np.dtype(np.uint16): _lib.DTYPE_U16,
                np.dtype(np.float32): _lib.DTYPE_F32}


def _image_to_numpy(im: _lib.Image) -> np.ndarray:
    dt = np.dtype(_NP_OF_DTYPE[im.dtype])
    shape: Tuple[int, ...] = (im.height, im.width)
    if im.channels > 1:
        shape = shape + (im.channels,)
    if im.pages > 1:
        shape = (im.pages,) + shape
    n = int(np.prod(shape))
    buf = (C.c_char * (n * dt.itemsize)).from_address(im.data)
    return np.frombuffer(buf, dtype=dt, count=n).reshape(shape).copy()


def _numpy_to_image(img: np.ndarray) -> Tuple[_lib.Image, np.ndarray]:
    """A gpuseg_image describing img (no copy when it is already C-contiguous). Returns the
    struct and the array it points into (keep it alive during the call)."""
    a = np.asarray(img)
    if a.dtype.newbyteorder("=") in _DTYPE_OF_NP and a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype not in _DTYPE_OF_NP:
        raise GpusegError(f"image dtype {a.dtype} is not supported: give uint8, uint16 or "
                          "float32 samples", "GPUSEG_UNSUPPORTED")
    if a.ndim == 2:
        h, w, c = a.shape[0], a.shape[1], 1
    elif a.ndim == 3 and 1 <= a.shape[2] <= 4:
        h, w, c = a.shape
    else:
        raise GpusegError(f"image shape {a.shape} is not H x W or H x W x C with C 1..4",
                          "GPUSEG_INVALID_ARGUMENT")
    if h == 0 or w == 0:
        raise GpusegError(f"image shape {a.shape} is empty", "GPUSEG_INVALID_ARGUMENT")
    a = np.ascontiguousarray(a)
    im = _lib.Image(width=w, height=h, channels=c, pages=1, dtype=_DTYPE_OF_NP[a.dtype],
                    data=a.ctypes.data)
    return im, a


def _labels_u32(labels: np.ndarray, what: str = "labels", volume: bool = False) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 2 and not (volume and a.ndim == 3):
        raise GpusegError(f"{what}: shape {a.shape} is not H x W" + (" or Z x H x W" if volume
                                                                      else ""),
                          "GPUSEG_INVALID_ARGUMENT")
    if a.dtype.kind not in "ui" and a.dtype != np.bool_:
        raise GpusegError(f"{what}: dtype {a.dtype} is not an integer type",
                          "GPUSEG_UNSUPPORTED")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise GpusegError(f"{what}: negative label values", "GPUSEG_INVALID_ARGUMENT")
    if a.size and a.max() > 0xFFFFFFFF:
        raise GpusegError(f"{what}: label values beyond uint32", "GPUSEG_TOO_LARGE")
    return np.ascontiguousarray(a, dtype=np.uint32)


class Context(_lib.Closable):
    """A device context (gpuseg_ctx): one OpenCL device, its queue and compiled programs.

    device: "auto" (the first GPU, else the first CPU device), "gpu", "cpu", a number N (as
    in `gpuseg devices`), "P:D", or a substring of the platform / device name; None follows
    $GPUSEG_DEVICE. Not for two threads at once: calls are serialised by a lock."""

    def __init__(self, device: Optional[Union[str, int]] = "auto", program_cache: bool = True):
        L = _lib.lib()
        p = _lib.CtxParams()
        L.gpuseg_ctx_params_default(C.byref(p))
        self._device_arg = None if device is None else str(device).encode()
        p.device = self._device_arg
        p.program_cache = 1 if program_cache else 0
        h = C.c_void_p()
        _check(L.gpuseg_ctx_create(C.byref(p), C.byref(h)))
        self._h: Optional[int] = h.value
        self._lock = threading.RLock()
        self._progress_user: Optional[ProgressCallback] = None
        self._progress_error: Optional[BaseException] = None
        self._cb = _lib.PROGRESS_FN(self._on_progress)  # kept alive with the context

    @property
    def handle(self) -> int:
        if not self._h:
            raise GpusegError("the context is closed", "GPUSEG_INVALID_ARGUMENT")
        return self._h

    @property
    def device(self) -> Dict[str, Any]:
        """The device this context runs on: name, platform, type, memory."""
        d = _lib.lib().gpuseg_ctx_device(self.handle).contents
        kinds = {1: "gpu", 2: "cpu", 3: "accelerator", 4: "other"}
        return {"index": d.index, "name": d.name.decode(), "platform": d.platform_name.decode(),
                "type": kinds.get(d.type, "other"), "global_mem_bytes": d.global_mem_bytes}

    def close(self) -> None:
        """Releases the context (idempotent)."""
        if self._h:
            _lib.lib().gpuseg_ctx_free(self._h)
            self._h = None


    def cancel(self) -> None:
        """Asks the call running on this context to stop (safe from any thread)."""
        if self._h:
            _lib.lib().gpuseg_ctx_cancel(self._h, 1)

    def _on_progress(self, user: Any, p: Any) -> None:
        cb = self._progress_user
        if cb is None or self._progress_error is not None:
            return
        q = p.contents
        try:
            cb((q.stage or b"").decode(), int(q.done), int(q.total), float(q.fraction))
        except BaseException as e:  # stop the call; re-raised by _call
            self._progress_error = e
            _lib.lib().gpuseg_ctx_cancel(self._h, 1)

    def _call(self, fn: Callable[[], int], progress: Optional[ProgressCallback] = None) -> None:
        """Runs fn (a foreign call on this context returning a status) in a worker thread, so
        that Ctrl-C in the calling thread cancels it: the device call returns
        GPUSEG_CANCELLED at its next check and KeyboardInterrupt is raised here. The error
        message is read in the worker (gpuseg_last_error is per thread)."""
        L = _lib.lib()
        with self._lock:
            h = self.handle
            self._progress_user = progress
            self._progress_error = None
            if progress is not None:
                L.gpuseg_ctx_set_progress(h, self._cb, None)
            box: Dict[str, Any] = {}
            # The worker says it has finished through this event, not through Thread.is_alive():
            # a KeyboardInterrupt that lands inside Thread.join() can leave the thread marked as
            # stopped while it still runs (CPython 3.11), and the next call would then use the
            # context at the same time as the cancelled one.
            finished = threading.Event()
            begun = threading.Event()

            def work() -> None:
                begun.set()
                try:
                    st = fn()
                    box["status"] = st
                    if st != _lib.OK:
                        box["msg"] = L.gpuseg_ctx_last_error(h) or L.gpuseg_last_error()
                except BaseException as e:
                    box["exc"] = e
                finally:
                    finished.set()

            t = threading.Thread(target=work, name="gpuseg-call", daemon=True)
            interrupted = False
            try:
                # Ctrl-C can land inside Thread.start() itself (the call's first progress report
                # comes within microseconds): the except below then cancels at once, instead of
                # the KeyboardInterrupt waiting, unseen, for the whole call to end.
                t.start()
                while not finished.is_set():
                    try:
                        finished.wait(0.05)
                    except KeyboardInterrupt:
                        interrupted = True
                        L.gpuseg_ctx_cancel(h, 1)
            except KeyboardInterrupt:
                interrupted = True
                L.gpuseg_ctx_cancel(h, 1)
                # interrupted before the thread was launched: it will never run
                if not begun.wait(5.0):
                    finished.set()
            finally:
                # a second Ctrl-C above cannot leave the device call running unwaited
                while not finished.is_set():
                    try:
                        finished.wait(0.05)
                    except KeyboardInterrupt:
                        interrupted = True
                        L.gpuseg_ctx_cancel(h, 1)
                L.gpuseg_ctx_set_progress(h, _lib.PROGRESS_FN(), None)
                L.gpuseg_ctx_cancel(h, 0)
                self._progress_user = None
            if interrupted:
                raise KeyboardInterrupt
            if self._progress_error is not None:
                err, self._progress_error = self._progress_error, None
                raise err
            if "exc" in box:
                raise box["exc"]
            if box["status"] != _lib.OK:
                _raise(box["status"], box.get("msg"))

    # ---- functions of the context ----------------------------------------------------------

    def masks_from_flows(self, flows: np.ndarray, *, flow_threshold: float = 0.4,
                         cellprob_threshold: float = 0.0, niter: int = 200, min_size: int = 15,
                         max_size_fraction: float = 0.4,
                         progress: Optional[ProgressCallback] = None) -> np.ndarray:
        """Labels from network outputs, as Cellpose 3.1 compute_masks + fill holes / remove
        small masks (gpuseg_flows_to_masks). flows: float32 [3, H, W] = dY, dX (network
        scale), cellprob logit; or a volume's [4, Z, H, W] = dZ, dY, dX, cellprob, as
        Cellpose's do_3D masks (gpuseg_flows_to_masks3d: no flow-error check, flow_threshold
        unused). Returns uint16 labels (uint32 above 65535 masks), H x W or Z x H x W."""
        f = np.asarray(flows)
        vol = f.ndim == 4 and f.shape[0] == 4
        if not vol and (f.ndim != 3 or f.shape[0] != 3):
            raise GpusegError(f"flows: shape {f.shape} is not [3, H, W] or [4, Z, H, W]",
                              "GPUSEG_INVALID_ARGUMENT")
        f = np.ascontiguousarray(f, dtype=np.float32)
        p = _lib.MasksParams()
        L = _lib.lib()
        L.gpuseg_masks_params_default(C.byref(p))
        p.flow_threshold, p.cellprob_threshold = flow_threshold, cellprob_threshold
        p.niter, p.min_size, p.max_size_fraction = niter, min_size, max_size_fraction
        nm = C.c_uint32()
        fp = f.ctypes.data_as(C.POINTER(C.c_float))
        if vol:
            lab = np.empty(f.shape[1:], np.uint32)
            self._call(lambda: L.gpuseg_flows_to_masks3d(
                self.handle, fp, f.shape[1], f.shape[2], f.shape[3], C.byref(p),
                lab.ctypes.data_as(C.POINTER(C.c_uint32)), C.byref(nm)), progress)
            return lab.astype(np.uint16) if nm.value <= 0xFFFF else lab
        out = C.POINTER(_lib.Image)()
        self._call(lambda: L.gpuseg_flows_to_masks(self.handle, fp, f.shape[1], f.shape[2],
                                                   C.byref(p), C.byref(out), C.byref(nm)),
                   progress)
        try:
            return _image_to_numpy(out.contents)
        finally:
            L.gpuseg_image_free(out)

    def flows_from_labels(self, labels: np.ndarray) -> np.ndarray:
        """Ideal flows of a label image, as Cellpose 3.1 masks_to_flows: float32 [2, H, W]
        (dY, dX unit vectors; 0 on background); of a Z x H x W label volume, float32
        [3, Z, H, W] (dZ, dY, dX: the 2-D flows of the slices of the three views summed, as
        Cellpose's masks_to_flows in 3-D; gpuseg_labels_to_flows3d)."""
        lab = _labels_u32(labels, volume=True)
        L = _lib.lib()
        if lab.ndim == 3:
            out = np.zeros((3,) + lab.shape, np.float32)
            self._call(lambda: L.gpuseg_labels_to_flows3d(
                self.handle, lab.ctypes.data_as(C.POINTER(C.c_uint32)), *lab.shape,
                out.ctypes.data_as(C.POINTER(C.c_float))))
            return out
        H, W = lab.shape
        out = np.zeros((2, H, W), np.float32)
        self._call(lambda: L.gpuseg_labels_to_flows(
            self.handle, lab.ctypes.data_as(C.POINTER(C.c_uint32)), H, W,
            out.ctypes.data_as(C.POINTER(C.c_float))))
        return out


def _result_info(r: _lib.SegmentResult, t0: float) -> Dict[str, Any]:
    """The info dict of segment() / segment_volume() / segment_stack() from a result (t0: the
    call's start, time.perf_counter())."""
    return {"diameter": r.diameter, "n_masks": int(r.n_masks), "rescale": r.rescale,
            "niter": int(r.niter), "n_tiles": int(r.n_tiles), "passes": int(r.passes),
            "diameter_estimated": bool(r.diameter_estimated),
            "timings": {"net": r.seconds_net, "masks": r.seconds_masks,
                        "total": time.perf_counter() - t0}}


class Segmenter(_lib.Closable):
    """A warm device context and network, as cellpose.models.CellposeModel.

    model: a Cellpose 3 model file, or a name (looked up among the bundled models, then in
    Cellpose's model folder: "cyto3", "nuclei"); None: $GPUSEG_MODEL, else the bundled
    nuclei model. device: as Context. The weights are uploaded once; every segment() call
    reuses them. Calls on one Segmenter are serialised (use one per thread or process)."""

    def __init__(self, model: Optional[Union[str, os.PathLike]] = None,
                 device: Optional[Union[str, int]] = "auto", program_cache: bool = True):
        self.model_path = default_model_path(None if model is None else os.fspath(model))
        self.ctx = Context(device, program_cache)
        L = _lib.lib()
        h = C.c_void_p()
        path = os.fsencode(self.model_path)
        self.ctx._call(lambda: L.gpuseg_net_load(self.ctx.handle, path, C.byref(h)))
        self._net: Optional[int] = h.value
        mi = _lib.ModelInfo()
        L.gpuseg_net_get_info(self._net, C.byref(mi))
        self.diam_mean = float(mi.diam_mean)
        self.diam_labels = float(mi.diam_labels)
        self.nbase = list(mi.nbase)

    def close(self) -> None:
        """Releases the network and the context (idempotent)."""
        if getattr(self, "_net", None):
            _lib.lib().gpuseg_net_free(self._net)
            self._net = None
        if getattr(self, "ctx", None) is not None:
            self.ctx.close()


    @property
    def device(self) -> Dict[str, Any]:
        return self.ctx.device

    def cancel(self) -> None:
        """Asks the running segment() to stop (from another thread)."""
        self.ctx.cancel()

    def _params(self, diameter: Optional[Union[float, str]], channels: Sequence[int],
                **kw: Any) -> _lib.SegmentParams:
        p = _lib.SegmentParams()
        _lib.lib().gpuseg_segment_params_default(C.byref(p))
        if diameter is None:
            p.diameter, p.estimate_diameter = 0.0, 1
        elif diameter == "model" or diameter == 0:
            p.diameter, p.estimate_diameter = 0.0, 0
        else:
            d = float(diameter)
            if not np.isfinite(d) or d < 0:
                raise GpusegError(f"diameter {diameter!r} is not a positive number, 0, "
                                  "'model' or None", "GPUSEG_INVALID_ARGUMENT")
            p.diameter, p.estimate_diameter = d, 0
        if len(channels) != 2:
            raise GpusegError(f"channels {tuple(channels)!r} is not (chan, chan2)",
                              "GPUSEG_INVALID_ARGUMENT")
        p.chan, p.chan2 = int(channels[0]), int(channels[1])
        norm = kw.pop("normalize")
        if norm is False:
            p.normalize = 0
        elif norm is not True:
            p.normalize, (p.norm_lo, p.norm_hi) = 1, (float(norm[0]), float(norm[1]))
        for k, v in kw.items():
            setattr(p, k, v)
        return p

    def segment(self, img: np.ndarray, diameter: Optional[Union[float, str]] = None,
                channels: Sequence[int] = (0, 0), *, flow_threshold: float = 0.4,
                cellprob_threshold: float = 0.0, min_size: int = 15, niter: int = 0,
                max_size_fraction: float = 0.4,
                normalize: Union[bool, Tuple[float, float]] = True, invert: bool = False,
                augment: bool = False, tile_overlap: float = 0.1, batch_size: int = 8,
                return_flows: bool = False, return_style: bool = False,
                block_size: Optional[int] = None, halo: int = 0,
                progress: Optional[ProgressCallback] = None
                ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Segments one 2-D image (CellposeModel.eval with resample=True).

        img: uint8, uint16 or float32; H x W, or H x W x C (C 1..4).
        diameter: None estimates it from a first pass, as `gpuseg segment` does by default;
          "model" (or 0) runs one pass at the model's diameter (Cellpose's diameter=None);
          a number runs one pass at that diameter.
        channels: Cellpose's (chan, chan2): 0 grey, 1 red, 2 green, 3 blue.
        normalize: True (1st-99th percentiles), False, or (lo, hi) percentiles.
        block_size: run blockwise (gpuseg_segment_blocks, docs/blockwise.md) with blocks of
          this side and `halo` (0: 4 x diameter); labels equal the whole run's up to
          renumbering for masks smaller than the halo.
        progress: called as progress(stage, done, total, fraction) between device steps; an
          exception raised in it stops the call and is re-raised.

        Returns (masks, info): masks uint16 (uint32 above 65535 masks) H x W; info holds
        diameter, n_masks, rescale, niter, n_tiles, passes, diameter_estimated, timings
        (seconds: net, masks, total), and flows (float32 [3, H, W]: dY, dX, cellprob) /
        style when asked for."""
        if not self._net:
            raise GpusegError("the segmenter is closed", "GPUSEG_INVALID_ARGUMENT")
        im, keep = _numpy_to_image(img)
        p = self._params(diameter, channels, normalize=normalize,
                         flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
                         min_size=min_size, niter=niter, max_size_fraction=max_size_fraction,
                         invert=int(invert), augment=int(augment), tile_overlap=tile_overlap,
                         batch_size=batch_size, want_flows=int(return_flows),
                         want_style=int(return_style))
        L = _lib.lib()
        t0 = time.perf_counter()
        if block_size is not None:
            return self._segment_blocks(im, keep, p, int(block_size), int(halo), progress, t0)
        r = _lib.SegmentResult()
        net = self._net
        self.ctx._call(lambda: L.gpuseg_segment(self.ctx.handle, net, C.byref(im), C.byref(p),
                                                C.byref(r)), progress)
        try:
            masks = _image_to_numpy(r.labels.contents)
            H, W = masks.shape
            info = _result_info(r, t0)
            if return_flows and r.flows:
                info["flows"] = np.ctypeslib.as_array(r.flows, shape=(3, H, W)).copy()
            if return_style and r.style:
                info["style"] = np.ctypeslib.as_array(r.style, shape=(r.style_len,)).copy()
            return masks, info
        finally:
            L.gpuseg_segment_result_free(C.byref(r))

    def _stack_image(self, stack: np.ndarray) -> Tuple[np.ndarray, _lib.Image, np.ndarray]:
        """A Z x H x W (x C) array as a gpuseg_image of Z pages (the array, the image, and the
        buffer that must outlive the call)."""
        if not self._net:
            raise GpusegError("the segmenter is closed", "GPUSEG_INVALID_ARGUMENT")
        a = np.asarray(stack)
        if a.ndim not in (3, 4) or (a.ndim == 4 and not 1 <= a.shape[3] <= 4):
            raise GpusegError(f"stack shape {a.shape} is not Z x H x W or Z x H x W x C with C "
                              "1..4", "GPUSEG_INVALID_ARGUMENT")
        Z = a.shape[0]
        im, keep = _numpy_to_image(a.reshape((Z * a.shape[1],) + a.shape[2:]))
        im.height, im.pages = a.shape[1], Z
        return a, im, keep

    def _stack_call(self, a: np.ndarray, call: Callable[[Any], int], flows_shape: Optional[
            Tuple[int, ...]], progress: Optional[ProgressCallback]
                    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Runs call(result pointer) (gpuseg_segment_volume or gpuseg_segment_stack) and returns
        (masks Z x H x W, info); flows_shape: the flows' shape when asked for, else None."""
        L = _lib.lib()
        t0 = time.perf_counter()
        r = _lib.SegmentResult()
        self.ctx._call(lambda: call(C.byref(r)), progress)
        try:
            masks = _image_to_numpy(r.labels.contents).reshape(a.shape[:3])
            info = _result_info(r, t0)
            if flows_shape and r.flows:
                info["flows"] = np.ctypeslib.as_array(r.flows, shape=flows_shape).copy()
            return masks, info
        finally:
            L.gpuseg_segment_result_free(C.byref(r))

    def segment_volume(self, stack: np.ndarray, diameter: Optional[Union[float, str]] = None,
                       channels: Sequence[int] = (0, 0), *, anisotropy: float = 1.0,
                       flow3d_smooth: float = 0.0, cellprob_threshold: float = 0.0,
                       min_size: int = 15, niter: int = 0, max_size_fraction: float = 0.4,
                       normalize: Union[bool, Tuple[float, float]] = True, invert: bool = False,
                       augment: bool = False, tile_overlap: float = 0.1, batch_size: int = 8,
                       return_flows: bool = False, progress: Optional[ProgressCallback] = None
                       ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Segments a Z stack in 3-D as CellposeModel.eval(do_3D=True) (gpuseg_segment_volume,
        docs/segment.md "Z stacks"): the network on every YX, ZX and ZY slice, the three views'
        flows combined, 3-D masks.

        stack: uint8, uint16 or float32; Z x H x W, or Z x H x W x C (C 1..4), Z >= 2.
        anisotropy: the Z step over the XY pixel size (Cellpose's anisotropy; 1 = None).
        flow3d_smooth: Gaussian sigma (voxels) on the flows; 0 = off.
        diameter, channels, normalize: as segment().

        Returns (masks, info): masks uint16 (uint32 above 65535) Z x H x W; info as segment()'s,
        with flows float32 [4, Z, H, W] (dZ, dY, dX, cellprob) when asked for."""
        a, im, keep = self._stack_image(stack)
        p = self._params(diameter, channels, normalize=normalize,
                         cellprob_threshold=cellprob_threshold, min_size=min_size, niter=niter,
                         max_size_fraction=max_size_fraction, invert=int(invert),
                         augment=int(augment), tile_overlap=tile_overlap,
                         batch_size=batch_size, want_flows=int(return_flows), want_style=0)
        L, net = _lib.lib(), self._net
        return self._stack_call(
            a, lambda r: L.gpuseg_segment_volume(self.ctx.handle, net, C.byref(im), C.byref(p),
                                                 float(anisotropy), float(flow3d_smooth), r),
            (4,) + a.shape[:3] if return_flows else None, progress)

    def segment_stack(self, stack: np.ndarray, stitch_threshold: float,
                      diameter: Optional[Union[float, str]] = None,
                      channels: Sequence[int] = (0, 0), *, flow_threshold: float = 0.4,
                      cellprob_threshold: float = 0.0, min_size: int = 15, niter: int = 0,
                      max_size_fraction: float = 0.4,
                      normalize: Union[bool, Tuple[float, float]] = True, invert: bool = False,
                      augment: bool = False, tile_overlap: float = 0.1, batch_size: int = 8,
                      return_flows: bool = False, progress: Optional[ProgressCallback] = None
                      ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Segments a Z stack plane by plane and links the planes' masks by IoU, as
        CellposeModel.eval(do_3D=False, stitch_threshold=T) (gpuseg_segment_stack, `gpuseg
        segment --stitch-threshold T`): one normalisation for the whole stack, each plane in
        2-D, utils.stitch3D, then 3-D hole filling and the size filter.

        stack: as segment_volume() (Z >= 1). stitch_threshold: the IoU above which a mask
        joins the one it overlaps most in the previous plane (> 0). Other arguments: as
        segment(). Returns (masks, info): masks Z x H x W; flows float32 [Z, 3, H, W] (dY, dX,
        cellprob per plane) when asked for."""
        t = float(stitch_threshold)
        if not np.isfinite(t) or t <= 0:
            raise GpusegError(f"stitch_threshold {stitch_threshold!r} is not a number > 0",
                              "GPUSEG_INVALID_ARGUMENT")
        a, im, keep = self._stack_image(stack)
        p = self._params(diameter, channels, normalize=normalize, flow_threshold=flow_threshold,
                         cellprob_threshold=cellprob_threshold, min_size=min_size, niter=niter,
                         max_size_fraction=max_size_fraction, invert=int(invert),
                         augment=int(augment), tile_overlap=tile_overlap,
                         batch_size=batch_size, want_flows=int(return_flows), want_style=0)
        L, net = _lib.lib(), self._net
        Z, H, W = a.shape[:3]
        return self._stack_call(
            a, lambda r: L.gpuseg_segment_stack(self.ctx.handle, net, C.byref(im), C.byref(p),
                                                t, r),
            (Z, 3, H, W) if return_flows else None, progress)

    def _segment_blocks(self, im: _lib.Image, keep: np.ndarray, p: _lib.SegmentParams,
                        block_size: int, halo: int, progress: Optional[ProgressCallback],
                        t0: float) -> Tuple[np.ndarray, Dict[str, Any]]:
        if p.estimate_diameter:
            raise GpusegError("blockwise segmentation needs a diameter (a number or 'model')",
                              "GPUSEG_UNSUPPORTED")
        L = _lib.lib()
        bp = _lib.BlocksParams()
        L.gpuseg_blocks_params_default(C.byref(bp))
        bp.block_size, bp.halo = block_size, halo
        out = C.POINTER(_lib.Image)()
        br = _lib.BlocksResult()
        net = self._net
        self.ctx._call(lambda: L.gpuseg_segment_blocks_image(
            self.ctx.handle, net, C.byref(im), C.byref(p), C.byref(bp), C.byref(out),
            C.byref(br)), progress)
        try:
            masks = _image_to_numpy(out.contents)
        finally:
            L.gpuseg_image_free(out)
        info = {"diameter": br.diameter, "n_masks": int(br.n_masks), "rescale": br.rescale,
                "niter": int(br.niter), "n_blocks": int(br.n_blocks), "halo": int(br.halo),
                "n_too_big": int(br.n_too_big), "n_tiles": int(br.n_tiles),
                "timings": {"percentiles": br.seconds_percentiles, "blocks": br.seconds_blocks,
                            "total": time.perf_counter() - t0}}
        return masks, info

    def masks_from_flows(self, flows: np.ndarray, **kw: Any) -> np.ndarray:
        """Context.masks_from_flows on this segmenter's device."""
        return self.ctx.masks_from_flows(flows, **kw)


_default_ctx: Optional[Context] = None
_default_lock = threading.Lock()


def _context() -> Context:
    global _default_ctx
    with _default_lock:
        if _default_ctx is None:
            _default_ctx = Context(None)
        return _default_ctx


def masks_from_flows(flows: np.ndarray, *, flow_threshold: float = 0.4,
                     cellprob_threshold: float = 0.0, niter: int = 200, min_size: int = 15,
                     max_size_fraction: float = 0.4, context: Optional[Context] = None,
                     progress: Optional[ProgressCallback] = None) -> np.ndarray:
    """Labels from float32 [3, H, W] flows (dY, dX, cellprob) as Cellpose 3.1's compute_masks,
    or from a volume's [4, Z, H, W] (dZ, dY, dX, cellprob) as its do_3D masks, on `context`
    (default: a shared context on $GPUSEG_DEVICE / the automatic device)."""
    return (context or _context()).masks_from_flows(
        flows, flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
        niter=niter, min_size=min_size, max_size_fraction=max_size_fraction, progress=progress)


def flows_from_labels(labels: np.ndarray, *, context: Optional[Context] = None) -> np.ndarray:
    """Cellpose 3.1 masks_to_flows of a label image: float32 [2, H, W] (dY, dX); of a label
    volume Z x H x W: float32 [3, Z, H, W] (dZ, dY, dX)."""
    return (context or _context()).flows_from_labels(labels)


def average_precision(truth: Union[np.ndarray, Sequence[np.ndarray]],
                      pred: Union[np.ndarray, Sequence[np.ndarray]],
                      thresholds: Sequence[float] = (0.5, 0.75, 0.9)
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cellpose 3.1 metrics.average_precision: (ap, tp, fp, fn). For one pair of label images
    each is an array over thresholds; for lists of images, [n_images, n_thresholds].
    Thresholds must lie in [0.5, 1]. Host-only (no device)."""
    single = isinstance(truth, np.ndarray)
    ts = [truth] if single else list(truth)
    ps = [pred] if single else list(pred)  # type: ignore[list-item]
    if len(ts) != len(ps):
        raise GpusegError(f"{len(ts)} true and {len(ps)} predicted images",
                          "GPUSEG_INVALID_ARGUMENT")
    th = np.ascontiguousarray(thresholds, dtype=np.float64)
    n = len(th)
    ap = np.zeros((len(ts), n), np.float32)
    tp, fp, fn = (np.zeros((len(ts), n), np.int64) for _ in range(3))
    L = _lib.lib()
    for i, (t, p) in enumerate(zip(ts, ps)):
        a, b = _labels_u32(t, "truth"), _labels_u32(p, "pred")
        if a.shape != b.shape:
            raise GpusegError(f"truth {a.shape} and prediction {b.shape} differ in shape",
                              "GPUSEG_INVALID_ARGUMENT")
        res = (_lib.ApResult * n)()
        _check(L.gpuseg_metrics_ap(a.ctypes.data_as(C.POINTER(C.c_uint32)),
                                   b.ctypes.data_as(C.POINTER(C.c_uint32)), a.shape[0],
                                   a.shape[1], th.ctypes.data_as(C.POINTER(C.c_double)), n, res))
        for j in range(n):
            ap[i, j], tp[i, j], fp[i, j], fn[i, j] = res[j].ap, res[j].tp, res[j].fp, res[j].fn
    if single:
        return ap[0], tp[0], fp[0], fn[0]
    return ap, tp, fp, fn


from . import shm  # noqa: E402  (needs the names above)
