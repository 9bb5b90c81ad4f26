#!/usr/bin/env python3
"""bench/conv_vs_openblas.py: our convolution implementations against OpenBLAS sgemm on the
same GEMM shapes (M = cout, N = H*W*batch, K = cin*k*k), in one script so that the ratios hold
on a noisy shared machine. Runs bench_conv (the C program) and then numpy's matmul (numpy's
bundled OpenBLAS) on float32 matrices of the GEMM shapes, each with warm-up, repeats and the
median of wall time and of process CPU time; prints JSON with the ratios.

The OpenBLAS side is the GEMM alone (no im2col, no BN/ReLU, no bias), while ours includes the
fused prologue and epilogue: the comparison favours OpenBLAS slightly.

Usage: conv_vs_openblas.py [--bench PATH/bench_conv] [--batch N] [--repeats R] [--threads T]
                          [--impl LIST] [--out FILE]
--impl is passed to bench_conv: a comma-separated list of clblast, direct, winograd, both
(clblast,direct) or all. Winograd's GFLOP/s count the direct convolution's FLOPs (the same
GEMM shape as OpenBLAS's), so its ratio is a time ratio.
--threads T pins both sides to T threads (OPENBLAS_NUM_THREADS for numpy, POCL_MAX_PTHREAD_COUNT
for PoCL); on a machine shared with other work, T = 1 gives the steadier per-core comparison,
because OpenBLAS's threads spin-wait for each other and lose badly when a core is taken.
Needs numpy (the project's .venv has it). OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which some
machines here set to work around old OpenBLAS builds, slow a current one down: this script
re-runs itself without them (only for itself) and reports the core OpenBLAS then uses.
"""
import argparse
import ctypes
import glob
import json
import os
import statistics
import subprocess
import sys
import time


def openblas_info():
    """Core name and thread count of the OpenBLAS that numpy loaded (None if not found)."""
    import numpy

    libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__) + ".libs", "*openblas*.so*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                core = getattr(lib, prefix + "get_corename" + suffix, None)
                nthr = getattr(lib, prefix + "get_num_threads" + suffix, None)
                if core and nthr:
                    core.restype = ctypes.c_char_p
                    return {"library": os.path.basename(path),
                            "core": core().decode(), "threads": int(nthr())}
    return None


def time_gemm(m, n, k, repeats):
    import numpy as np

    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up (thread pool start, page faults)
    # correctness before timing: one column against float64
    ref = a.astype(np.float64) @ b[:, :1].astype(np.float64)
    assert np.allclose(c[:, :1], ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max()), "sgemm wrong"
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        np.matmul(a, b, out=c)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), min(wall), max(wall)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=os.path.join(here, "..", "build", "bench", "bench_conv"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--impl", default="both",
                    help="bench_conv --impl list: clblast,direct,winograd | both | all")
    ap.add_argument("--threads", type=int, default=0, help="threads for both (0: default)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    # Environment for OpenBLAS must be set before numpy loads it: re-run this script once.
    want_threads = str(args.threads) if args.threads > 0 else None
    if "GPUSEG_BENCH_CHILD" not in os.environ:
        env = dict(os.environ)
        env["GPUSEG_BENCH_CHILD"] = "1"
        notes = []
        if env.get("OPENBLAS_CORETYPE") or env.get("OPENBLAS_L2_SIZE"):
            notes.append("unset OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s for this run" % (
                env.pop("OPENBLAS_CORETYPE", ""), env.pop("OPENBLAS_L2_SIZE", "")))
        if want_threads:
            env["OPENBLAS_NUM_THREADS"] = want_threads
            env["POCL_MAX_PTHREAD_COUNT"] = want_threads
            notes.append("threads pinned to %s (OpenBLAS and PoCL)" % want_threads)
        env["GPUSEG_BENCH_NOTE"] = "; ".join(notes)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)

    proc = subprocess.run([args.bench, "--batch", str(args.batch), "--repeats", str(args.repeats),
                           "--impl", args.impl], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.exit("bench_conv failed (%d): %s" % (proc.returncode, proc.stderr.strip()))
    ours = json.loads(proc.stdout)

    commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report = {"device": ours["device"], "platform": ours["platform"], "driver": ours["driver"],
              "commit": commit or None, "batch": args.batch, "repeats": args.repeats,
              "threads": args.threads or "default",
              "openblas": openblas_info(), "note": os.environ.get("GPUSEG_BENCH_NOTE") or None,
              "shapes": []}
    shapes = {}
    for r in ours["results"]:
        shapes.setdefault(r["shape"], {"shape": r["shape"], "m": r["gemm_m"], "n": r["gemm_n"],
                                       "k": r["gemm_k"]})[r["impl"]] = {
            "gflops": r["gflops"], "gflops_per_cpu_s": r["gflops_per_cpu_s"],
            "median_s": r["median_s"], "cold_s": r["cold_s"]}
    for s in shapes.values():
        wall, cpu, lo, hi = time_gemm(s["m"], s["n"], s["k"], args.repeats)
        flops = 2.0 * s["m"] * s["n"] * s["k"]
        s["openblas"] = {"gflops": round(flops / wall * 1e-9, 2),
                         "gflops_per_cpu_s": round(flops / cpu * 1e-9, 2),
                         "median_s": round(wall, 6), "min_s": round(lo, 6), "max_s": round(hi, 6)}
        for impl in ("direct", "clblast", "winograd"):
            if impl in s:
                s[impl + "_vs_openblas"] = round(s[impl]["gflops"] / s["openblas"]["gflops"], 3)
                s[impl + "_vs_openblas_cpu"] = round(
                    s[impl]["gflops_per_cpu_s"] / s["openblas"]["gflops_per_cpu_s"], 3)
        if "direct" in s and "winograd" in s:
            s["winograd_vs_direct"] = round(s["winograd"]["gflops"] / s["direct"]["gflops"], 3)
        report["shapes"].append(s)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
