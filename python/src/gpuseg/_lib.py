"""ctypes declarations of the public C API of libgpuseg (include/gpuseg/*.h) that the package uses.

The structures mirror the headers field by field; the library is found by `library_path()`:
$GPUSEG_LIBRARY when set, else the libgpuseg.so installed inside this package (the wheel's
lib/ folder). Foreign calls through ctypes.CDLL release the GIL for their duration.
"""

from __future__ import annotations

import ctypes as C
import os
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent

# gpuseg_status (common.h)
OK = 0
CANCELLED = -17

# gpuseg_dtype (image.h)
DTYPE_U8, DTYPE_U16, DTYPE_U32, DTYPE_I32, DTYPE_F32 = 1, 2, 3, 4, 5


class Closable:
    """Context-manager and finaliser behaviour of the handle classes: `with` closes, and so does
    garbage collection (errors on that path are ignored). Subclasses define close()."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Limits(C.Structure):
    # gpuseg/limits.h: 0 = environment, else default.
    _fields_ = [("max_pixels", C.c_uint64), ("max_objects", C.c_uint64),
                ("max_model_bytes", C.c_uint64)]


LOG_FN = C.CFUNCTYPE(None, C.c_void_p, C.c_int, C.c_char_p)


class CtxParams(C.Structure):
    _fields_ = [("device", C.c_char_p), ("program_cache", C.c_int), ("cache_dir", C.c_char_p),
                ("kernel_dir", C.c_char_p), ("max_alloc_bytes", C.c_uint64), ("limits", Limits),
                ("log", LOG_FN), ("log_user", C.c_void_p), ("log_level", C.c_int)]


class DeviceInfo(C.Structure):
    _fields_ = [("index", C.c_int), ("platform_index", C.c_int), ("device_index", C.c_int),
                ("type", C.c_int), ("platform_name", C.c_char * 128),
                ("platform_version", C.c_char * 128), ("name", C.c_char * 128),
                ("vendor", C.c_char * 128), ("device_version", C.c_char * 128),
                ("driver_version", C.c_char * 128), ("global_mem_bytes", C.c_uint64),
                ("max_alloc_bytes", C.c_uint64), ("local_mem_bytes", C.c_uint64),
                ("max_work_group_size", C.c_size_t), ("compute_units", C.c_uint),
                ("fp16", C.c_int), ("fp64", C.c_int)]


class Progress(C.Structure):
    _fields_ = [("stage", C.c_char_p), ("done", C.c_uint64), ("total", C.c_uint64),
                ("fraction", C.c_double)]


PROGRESS_FN = C.CFUNCTYPE(None, C.c_void_p, C.POINTER(Progress))


class Image(C.Structure):
    _fields_ = [("width", C.c_uint32), ("height", C.c_uint32), ("channels", C.c_uint32),
                ("pages", C.c_uint32), ("dtype", C.c_int), ("data", C.c_void_p)]


class ModelInfo(C.Structure):
    _fields_ = [("nbase", C.c_int * 5), ("nout", C.c_int), ("style_channels", C.c_int),
                ("diam_mean", C.c_float), ("has_diam_mean", C.c_bool),
                ("diam_labels", C.c_float), ("has_diam_labels", C.c_bool),
                ("n_tensors", C.c_size_t), ("n_parameters", C.c_size_t),
                ("weight_dtype", C.c_int)]


class SegmentParams(C.Structure):
    _fields_ = [("diameter", C.c_double), ("chan", C.c_int), ("chan2", C.c_int),
                ("invert", C.c_int), ("normalize", C.c_int), ("norm_lo", C.c_float),
                ("norm_hi", C.c_float), ("flow_threshold", C.c_float),
                ("cellprob_threshold", C.c_float), ("niter", C.c_uint32),
                ("min_size", C.c_int32), ("max_size_fraction", C.c_double),
                ("augment", C.c_int), ("tile_overlap", C.c_double), ("batch_size", C.c_uint),
                ("page", C.c_uint32), ("want_flows", C.c_int), ("want_style", C.c_int),
                ("estimate_diameter", C.c_int), ("size_model", C.c_void_p)]


class SegmentResult(C.Structure):
    _fields_ = [("labels", C.POINTER(Image)), ("n_masks", C.c_uint32),
                ("flows", C.POINTER(C.c_float)), ("style", C.POINTER(C.c_float)),
                ("style_len", C.c_uint32), ("diameter", C.c_double), ("rescale", C.c_double),
                ("niter", C.c_uint32), ("n_tiles", C.c_uint32), ("batch_size", C.c_uint),
                ("seconds_net", C.c_double), ("seconds_masks", C.c_double),
                ("diameter_estimated", C.c_int), ("diameter_first_pass", C.c_double),
                ("diameter_estimate", C.c_double), ("passes", C.c_uint),
                ("diameter_style", C.c_double)]


class MasksParams(C.Structure):
    _fields_ = [("cellprob_threshold", C.c_float), ("flow_threshold", C.c_float),
                ("niter", C.c_uint32), ("min_size", C.c_int32),
                ("max_size_fraction", C.c_double)]


class ApResult(C.Structure):
    _fields_ = [("threshold", C.c_double), ("n_true", C.c_uint32), ("n_pred", C.c_uint32),
                ("tp", C.c_uint32), ("fp", C.c_uint32), ("fn", C.c_uint32), ("ap", C.c_double)]


class BlocksParams(C.Structure):
    # the resume and event fields (gpuseg/blocks.h) are not used from Python; they must be
    # here so that gpuseg_blocks_params_default writes inside the structure
    _fields_ = [("block_size", C.c_uint32), ("halo", C.c_uint32), ("on_event", C.c_void_p),
                ("event_user", C.c_void_p), ("norm", C.c_void_p), ("first_block", C.c_uint32),
                ("n_known", C.c_uint32), ("known_masks", C.c_void_p),
                ("no_tile_cache", C.c_uint32)]


class BlocksResult(C.Structure):
    _fields_ = [("n_masks", C.c_uint32), ("n_blocks", C.c_uint32), ("halo", C.c_uint32),
                ("n_tiles_run", C.c_uint64), ("n_tiles", C.c_uint32), ("n_too_big", C.c_uint32),
                ("norm_lo", C.c_float * 2), ("norm_hi", C.c_float * 2),
                ("diameter", C.c_double), ("rescale", C.c_double), ("niter", C.c_uint32),
                ("seconds_percentiles", C.c_double), ("seconds_blocks", C.c_double),
                ("tile_cache_peak", C.c_uint64)]


# gpuseg/blocks.h: the distributed entries (a region-reading callback, the plan, one block)
REGION_READ_FN = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_uint32, C.c_uint32, C.c_uint32,
                             C.c_uint32, C.POINTER(C.POINTER(Image)))


class BlockSource(C.Structure):
    _fields_ = [("width", C.c_uint32), ("height", C.c_uint32), ("read", REGION_READ_FN),
                ("user", C.c_void_p)]


BLOCKS_PLAN_VERSION = 1


class BlocksPlan(C.Structure):
    _fields_ = [("version", C.c_uint32), ("params", SegmentParams), ("width", C.c_uint32),
                ("height", C.c_uint32), ("block_size", C.c_uint32), ("halo", C.c_uint32),
                ("n_blocks_x", C.c_uint32), ("n_blocks_y", C.c_uint32),
                ("norm", C.c_float * 8), ("diameter", C.c_double), ("rescale", C.c_double),
                ("niter", C.c_uint32), ("n_tiles", C.c_uint32),
                ("seconds_percentiles", C.c_double)]


class BlockResult(C.Structure):
    _fields_ = [("x0", C.c_uint32), ("y0", C.c_uint32), ("width", C.c_uint32),
                ("height", C.c_uint32), ("n_masks", C.c_uint32), ("n_too_big", C.c_uint32),
                ("n_tiles_run", C.c_uint64), ("seconds", C.c_double)]


SHM_NAME_MAX = 128


class ShmInfo(C.Structure):
    _fields_ = [("name", C.c_char * SHM_NAME_MAX), ("state", C.c_int), ("dtype", C.c_int),
                ("ndim", C.c_uint32), ("shape", C.c_uint64 * 4), ("data_offset", C.c_uint64),
                ("data_bytes", C.c_uint64), ("segment_bytes", C.c_uint64),
                ("n_masks", C.c_uint64), ("diameter", C.c_double),
                ("producer_pid", C.c_int64), ("producer_start", C.c_uint64),
                ("created_ns", C.c_uint64), ("checksum", C.c_uint32)]


def library_path() -> str:
    """The libgpuseg shared library this package loads."""
    env = os.environ.get("GPUSEG_LIBRARY")
    if env:
        return env
    for cand in sorted((PACKAGE_DIR / "lib").glob("libgpuseg.so*")):
        return str(cand)
    raise OSError(f"libgpuseg.so is not installed in {PACKAGE_DIR / 'lib'} and $GPUSEG_LIBRARY "
                  "is unset: reinstall the package (pip install ./python from the repository)")


_lib: Optional[C.CDLL] = None


def _declare(lib: C.CDLL) -> None:
    st = C.c_int
    P = C.POINTER
    vp = C.c_void_p
    sigs = {
        "gpuseg_version": (C.c_char_p, []),
        "gpuseg_last_error": (C.c_char_p, []),
        "gpuseg_status_name": (C.c_char_p, [st]),
        "gpuseg_free": (None, [vp]),
        "gpuseg_ctx_params_default": (None, [P(CtxParams)]),
        "gpuseg_ctx_create": (st, [P(CtxParams), P(vp)]),
        "gpuseg_ctx_free": (None, [vp]),
        "gpuseg_ctx_set_progress": (None, [vp, PROGRESS_FN, vp]),
        "gpuseg_ctx_cancel": (None, [vp, C.c_int]),
        "gpuseg_ctx_cancelled": (C.c_int, [vp]),
        "gpuseg_ctx_last_error": (C.c_char_p, [vp]),
        "gpuseg_ctx_device": (P(DeviceInfo), [vp]),
        "gpuseg_model_find": (st, [C.c_char_p, P(C.c_char_p), C.c_size_t, C.c_char_p,
                                   C.c_size_t]),
        "gpuseg_net_load": (st, [vp, C.c_char_p, P(vp)]),
        "gpuseg_net_free": (None, [vp]),
        "gpuseg_net_get_info": (None, [vp, P(ModelInfo)]),
        "gpuseg_segment_params_default": (None, [P(SegmentParams)]),
        "gpuseg_segment": (st, [vp, vp, P(Image), P(SegmentParams), P(SegmentResult)]),
        "gpuseg_segment_volume": (st, [vp, vp, P(Image), P(SegmentParams), C.c_double,
                                       C.c_double, P(SegmentResult)]),
        "gpuseg_segment_stack": (st, [vp, vp, P(Image), P(SegmentParams), C.c_double,
                                      P(SegmentResult)]),
        "gpuseg_segment_result_free": (None, [P(SegmentResult)]),
        "gpuseg_image_read": (st, [C.c_char_p, P(P(Image))]),
        "gpuseg_image_free": (None, [P(Image)]),
        "gpuseg_image_create": (st, [C.c_uint32, C.c_uint32, C.c_uint32, C.c_uint32, C.c_int,
                                     P(P(Image))]),
        "gpuseg_masks_params_default": (None, [P(MasksParams)]),
        "gpuseg_flows_to_masks": (st, [vp, P(C.c_float), C.c_uint32, C.c_uint32,
                                       P(MasksParams), P(P(Image)), P(C.c_uint32)]),
        "gpuseg_labels_to_flows": (st, [vp, P(C.c_uint32), C.c_uint32, C.c_uint32,
                                        P(C.c_float)]),
        "gpuseg_flows_to_masks3d": (st, [vp, P(C.c_float), C.c_uint32, C.c_uint32, C.c_uint32,
                                         P(MasksParams), P(C.c_uint32), P(C.c_uint32)]),
        "gpuseg_labels_to_flows3d": (st, [vp, P(C.c_uint32), C.c_uint32, C.c_uint32,
                                          C.c_uint32, P(C.c_float)]),
        "gpuseg_labels_diameter": (st, [P(C.c_uint32), C.c_uint32, C.c_uint32,
                                        P(C.c_double)]),
        "gpuseg_metrics_ap": (st, [P(C.c_uint32), P(C.c_uint32), C.c_uint32, C.c_uint32,
                                   P(C.c_double), C.c_size_t, P(ApResult)]),
        "gpuseg_blocks_params_default": (None, [P(BlocksParams)]),
        "gpuseg_segment_blocks_image": (st, [vp, vp, P(Image), P(SegmentParams),
                                             P(BlocksParams), P(P(Image)), P(BlocksResult)]),
        "gpuseg_blocks_plan_compute": (st, [vp, vp, P(BlockSource), P(SegmentParams),
                                            P(BlocksParams), P(BlocksPlan)]),
        "gpuseg_blocks_plan_core": (st, [P(BlocksPlan), C.c_uint32, P(C.c_uint32),
                                         P(C.c_uint32), P(C.c_uint32), P(C.c_uint32)]),
        "gpuseg_segment_block": (st, [vp, vp, P(BlockSource), P(BlocksPlan), C.c_uint32,
                                      P(C.c_uint64), P(BlockResult)]),
        "gpuseg_shm_open": (st, [C.c_char_p, C.c_double, P(vp)]),
        "gpuseg_shm_get_info": (P(ShmInfo), [vp]),
        "gpuseg_shm_payload": (vp, [vp]),
        "gpuseg_shm_free": (None, [vp]),
        "gpuseg_shm_unlink": (st, [C.c_char_p]),
        "gpuseg_shm_create_labels": (st, [C.c_char_p, P(Image), C.c_uint64, C.c_double,
                                          P(vp)]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args


# The C name of each structure mirrored above, checked against the library's own sizes
# (gpuseg_struct_size) when it is loaded: a library whose structures grew is refused, instead of
# writing past these copies.
STRUCTS = {Limits: "gpuseg_limits", CtxParams: "gpuseg_ctx_params",
           DeviceInfo: "gpuseg_device_info", Progress: "gpuseg_progress", Image: "gpuseg_image",
           ModelInfo: "gpuseg_model_info", SegmentParams: "gpuseg_segment_params",
           SegmentResult: "gpuseg_segment_result", MasksParams: "gpuseg_masks_params",
           ApResult: "gpuseg_ap_result", BlocksParams: "gpuseg_blocks_params",
           BlocksResult: "gpuseg_blocks_result", BlockSource: "gpuseg_block_source",
           BlocksPlan: "gpuseg_blocks_plan", BlockResult: "gpuseg_block_result",
           ShmInfo: "gpuseg_shm_info"}


def check_struct_sizes(handle: C.CDLL, path: str) -> None:
    """Raises OSError naming the first structure whose size differs from the library's."""
    size = handle.gpuseg_struct_size
    size.restype = C.c_size_t
    size.argtypes = [C.c_char_p]
    for cls, name in STRUCTS.items():
        want = size(name.encode())
        if want != C.sizeof(cls):
            raise OSError(f"{path}: {name} is {want} bytes in this library but {C.sizeof(cls)} "
                          "in the Python binding: the package and libgpuseg do not match "
                          "(reinstall with pip install ./python)")


def lib() -> C.CDLL:
    """The loaded library (loaded, checked and declared on first use)."""
    global _lib
    if _lib is None:
        path = library_path()
        handle = C.CDLL(path)
        check_struct_sizes(handle, path)
        _declare(handle)
        _lib = handle
    return _lib
