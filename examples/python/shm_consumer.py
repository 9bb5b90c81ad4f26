#!/usr/bin/env python3
"""Consume a gpuseg label segment from Python (numpy and the standard library only).

The scenario of docs/shm.md: this program starts gpuseg in its own process, reads the one JSON
line gpuseg prints ({"shm": name, "shape", "dtype", "offset", "n_masks", "diameter", ...}),
maps the shared-memory segment by name, checks its header and CRC-32 checksum, saves the label
array as raw binary with numpy (plus a .json sidecar), prints the number of masks and the
diameter, and releases and removes the segment.

    python3 shm_consumer.py IMAGE [-o OUT.bin] [--gpuseg PATH] [--command TEMPLATE] [--keep]

--command is the producer's command line with {gpuseg} and {image} placeholders. The default,
"{gpuseg} shm put {image} --json", publishes an existing label image; with segmentation it is
"{gpuseg} segment {image} --shm-only --json". Exit status 0 on success, 1 on any error.
"""

import argparse
import json
import os
import shlex
import struct
import subprocess
import sys
import time
import zlib
from multiprocessing import resource_tracker, shared_memory

import numpy as np

# Version-1 header (docs/shm.md): all fields little-endian at fixed offsets.
HEADER = struct.Struct("<8s6I4Q3QdQQIIQ")
assert HEADER.size == 128
MAGIC = b"GPUSEGSH"
STATE_OFFSET = 16
WRITING, READY, FAILED = 0, 1, 2
DTYPES = {2: np.dtype("<u2"), 3: np.dtype("<u4")}
CHECKSUM_CRC32 = 1


class SegmentError(Exception):
    pass


def run_producer(template, gpuseg, image):
    """Runs the producer and returns the JSON object of the last line that is one."""
    argv = [a.format(gpuseg=gpuseg, image=image) for a in shlex.split(template)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SegmentError(
            f"{argv[0]} exited with {proc.returncode}: {proc.stderr.strip() or '(no message)'}")
    info = None
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            info = json.loads(line)
    if info is None or "shm" not in info:
        raise SegmentError(f"no JSON line with a segment name in the output of {argv[0]}")
    return info


def attach(name):
    """Maps an existing segment without letting Python's resource tracker own it.

    Before Python 3.13 every SharedMemory, even one merely attached, is registered with the
    resource tracker, which unlinks it (with a "leaked shared_memory" warning) when this
    process exits. Python >= 3.13 takes track=False. Older versions: keep the registration
    while the segment is in use and balance it in release()."""
    bare = name.lstrip("/")
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=bare, create=False, track=False)
    return shared_memory.SharedMemory(name=bare, create=False)


def release(shm, unlink):
    """Unmaps, and either removes the segment or leaves it for someone else."""
    shm.close()
    if unlink:
        shm.unlink()  # (< 3.13: also unregisters from the resource tracker)
    elif sys.version_info < (3, 13):
        resource_tracker.unregister(shm._name, "shared_memory")


def validate(shm, expected, timeout_s=10.0):
    """Checks the header against the mapping (and the producer's JSON); returns the array."""
    buf = shm.buf
    name = expected["shm"]
    if hasattr(shm, "_fd") and os.fstat(shm._fd).st_uid != os.geteuid():
        raise SegmentError(f"{name}: owned by another user")
    if len(buf) < 4096:
        raise SegmentError(f"{name}: only {len(buf)} bytes, smaller than the header page")
    # Producers print their JSON line after publishing, so the state is READY already; wait a
    # little anyway in case a caller learnt the name another way.
    deadline = time.monotonic() + timeout_s
    while True:
        (state,) = struct.unpack_from("<I", buf, STATE_OFFSET)
        if state == READY:
            break
        if state == FAILED:
            raise SegmentError(f"{name}: the producer marked it failed")
        if state != WRITING or time.monotonic() > deadline:
            raise SegmentError(f"{name}: not ready (state {state})")
        time.sleep(0.005)
    (magic, version, header_size, state, dtype_code, ndim, checksum_kind, *rest) = \
        HEADER.unpack_from(buf, 0)
    shape4, rest = rest[:4], rest[4:]
    (data_offset, data_bytes, n_masks, diameter, pid, start, checksum, _reserved,
     _created) = rest
    if magic != MAGIC:
        raise SegmentError(f"{name}: bad magic {magic!r}")
    if version != 1 or header_size != 128:
        raise SegmentError(f"{name}: layout version {version}, header size {header_size}")
    if dtype_code not in DTYPES:
        raise SegmentError(f"{name}: dtype code {dtype_code} is not uint16 (2) or uint32 (3)")
    if not 1 <= ndim <= 4 or any(s == 0 for s in shape4[:ndim]) or any(shape4[ndim:]):
        raise SegmentError(f"{name}: bad shape {shape4} for {ndim} dimensions")
    dtype = DTYPES[dtype_code]
    shape = tuple(shape4[:ndim])
    if data_bytes != int(np.prod(shape, dtype=np.uint64)) * dtype.itemsize:
        raise SegmentError(f"{name}: {data_bytes} data bytes do not match shape {shape}")
    if data_offset < 4096 or data_offset % 4096 or data_offset + data_bytes > len(buf):
        raise SegmentError(f"{name}: data ({data_bytes} bytes at {data_offset}) outside the "
                           f"{len(buf)}-byte segment")
    if checksum_kind != CHECKSUM_CRC32:
        raise SegmentError(f"{name}: unknown checksum kind {checksum_kind}")
    crc = zlib.crc32(buf[data_offset:data_offset + data_bytes])
    if crc != checksum:
        raise SegmentError(f"{name}: checksum {crc:#010x} != header {checksum:#010x}")
    if (list(shape) != expected.get("shape") or dtype.name != expected.get("dtype")
            or data_offset != expected.get("offset")):
        raise SegmentError(f"{name}: header and the producer's JSON line disagree")
    labels = np.ndarray(shape, dtype=dtype, buffer=buf, offset=data_offset)
    return labels, n_masks, diameter


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("-o", "--output", help="raw labels to write (default: STEM_segmentation.bin)")
    ap.add_argument("--gpuseg", default=os.environ.get("GPUSEG", "gpuseg"),
                    help="the gpuseg program (default: $GPUSEG or gpuseg on PATH)")
    ap.add_argument("--command", default="{gpuseg} shm put {image} --json",
                    help="producer command line with {gpuseg} and {image} placeholders")
    ap.add_argument("--keep", action="store_true", help="leave the segment instead of removing it")
    args = ap.parse_args()
    out = args.output or os.path.splitext(os.path.basename(args.image))[0] + "_segmentation.bin"

    try:
        info = run_producer(args.command, args.gpuseg, args.image)
        shm = attach(info["shm"])
    except (SegmentError, OSError, ValueError) as e:
        print(f"shm_consumer: {e}", file=sys.stderr)
        return 1
    ok = False
    labels = None
    try:
        labels, n_masks, diameter = validate(shm, info)
        # Whole file or nothing: write beside the target, then rename.
        tmp = out + ".tmp"
        labels.tofile(tmp)
        os.replace(tmp, out)
        with open(os.path.splitext(out)[0] + ".json", "w") as f:
            json.dump({"shape": list(labels.shape), "dtype": labels.dtype.name,
                       "n_masks": n_masks, "diameter": diameter}, f)
            f.write("\n")
        print(f"shm: {info['shm']}")
        print(f"saved: {out}")
        print(f"n_masks: {n_masks}")
        print(f"diameter: {diameter}")
        ok = True
    except (SegmentError, OSError, ValueError) as e:
        print(f"shm_consumer: {e}", file=sys.stderr)
    finally:
        labels = None  # no view may outlive the mapping (close() refuses while one exists)
        release(shm, unlink=not args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
