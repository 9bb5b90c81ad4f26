"""Shared-memory label segments (gpuseg/shm.h, docs/shm.md) from Python.

    with gpuseg.shm.open(name) as seg:      # validated: owner, mode, header, CRC-32
        labels = seg.array                  # read-only numpy view into the mapping
        n = seg.info["n_masks"]
    # leaving the block unmaps it; seg.unlink() (or open(..., unlink=True)) removes the name

`publish(labels)` is the producer side (gpuseg_shm_create_labels): it returns the name of a
new READY segment holding a copy of the labels.
"""

from __future__ import annotations

import ctypes as C
import os
from typing import Any, Dict, Optional

import numpy as np

from . import _lib
from . import GpusegError, _check, _labels_u32

__all__ = ["Segment", "open", "read", "publish", "unlink"]

_STATES = {0: "writing", 1: "ready", 2: "failed"}


class Segment(_lib.Closable):
    """An open segment (gpuseg_shm_open). `array` is a read-only view into the mapping that
    is valid until close(); copy it (seg.array.copy(), or read()) to keep the labels."""

    def __init__(self, name: str, timeout: float = 0.0, unlink: bool = False):
        L = _lib.lib()
        h = C.c_void_p()
        _check(L.gpuseg_shm_open(os.fsencode(name), float(timeout), C.byref(h)))
        self._h: Optional[int] = h.value
        self._unlink_on_close = unlink
        i = L.gpuseg_shm_get_info(self._h).contents
        self.name: str = i.name.decode()
        self.info: Dict[str, Any] = {
            "name": self.name, "state": _STATES.get(i.state, str(i.state)),
            "dtype": "uint16" if i.dtype == _lib.DTYPE_U16 else "uint32",
            "shape": tuple(int(i.shape[k]) for k in range(i.ndim)),
            "n_masks": int(i.n_masks), "diameter": float(i.diameter),
            "producer_pid": int(i.producer_pid), "checksum": int(i.checksum)}
        dt = np.dtype("<u2") if i.dtype == _lib.DTYPE_U16 else np.dtype("<u4")
        n = int(i.data_bytes) // dt.itemsize
        buf = (C.c_char * int(i.data_bytes)).from_address(L.gpuseg_shm_payload(self._h))
        a = np.frombuffer(buf, dtype=dt, count=n).reshape(self.info["shape"])
        a.flags.writeable = False
        self._array: Optional[np.ndarray] = a

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            raise GpusegError(f"{self.name}: the segment is closed", "GPUSEG_INVALID_ARGUMENT")
        return self._array

    def unlink(self) -> None:
        """Removes the segment's name from the system (the mapping stays until close())."""
        _check(_lib.lib().gpuseg_shm_unlink(self.name.encode()))
        self._unlink_on_close = False

    def close(self) -> None:
        """Unmaps the segment (and unlinks it when opened with unlink=True). Idempotent."""
        if self._h:
            self._array = None
            _lib.lib().gpuseg_shm_free(self._h)
            self._h = None
            if self._unlink_on_close:
                self._unlink_on_close = False
                _check(_lib.lib().gpuseg_shm_unlink(self.name.encode()))



def open(name: str, timeout: float = 0.0, unlink: bool = False) -> Segment:  # noqa: A001
    """Maps a gpuseg segment by name (with or without the leading '/'), waiting up to timeout
    seconds for it to be READY; unlink=True removes it when closed."""
    return Segment(name, timeout, unlink)


def read(name: str, timeout: float = 0.0, unlink: bool = True) -> np.ndarray:
    """A copy of a segment's labels; the segment is released (and removed unless unlink is
    False)."""
    with Segment(name, timeout, unlink) as seg:
        return seg.array.copy()


def publish(labels: np.ndarray, n_masks: Optional[int] = None, diameter: float = 0.0,
            name: Optional[str] = None) -> str:
    """Publishes a copy of H x W (or P x H x W) labels in a new READY segment and returns its
    name; uint16 stays uint16, anything else is stored as uint32. The segment stays until
    someone unlinks it (unlink(), read(), `gpuseg shm rm`)."""
    a = np.asarray(labels)
    if a.ndim not in (2, 3):
        raise GpusegError(f"labels: shape {a.shape} is not H x W or P x H x W",
                          "GPUSEG_INVALID_ARGUMENT")
    pages = 1 if a.ndim == 2 else a.shape[0]
    if a.dtype == np.uint16:
        arr = np.ascontiguousarray(a)
        dt = _lib.DTYPE_U16
    else:
        arr = np.stack([_labels_u32(p) for p in a.reshape((-1,) + a.shape[-2:])]).reshape(a.shape)
        dt = _lib.DTYPE_U32
    im = _lib.Image(width=a.shape[-1], height=a.shape[-2], channels=1, pages=pages, dtype=dt,
                    data=arr.ctypes.data)
    nm = int(arr.max()) if n_masks is None and arr.size else int(n_masks or 0)
    h = C.c_void_p()
    L = _lib.lib()
    _check(L.gpuseg_shm_create_labels(name.encode() if name else None, C.byref(im), nm,
                                      float(diameter), C.byref(h)))
    try:
        return L.gpuseg_shm_get_info(h.value).contents.name.decode()
    finally:
        L.gpuseg_shm_free(h.value)


def unlink(name: str) -> None:
    """Removes a segment by name (GpusegError GPUSEG_NOT_FOUND when there is none)."""
    _check(_lib.lib().gpuseg_shm_unlink(os.fsencode(name)))
