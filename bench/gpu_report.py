#!/usr/bin/env python3
"""bench/gpu_report.py: report.md from the JSON lines bench/gpu_vs_cellpose.py wrote on a GPU.

    python3 bench/gpu_report.py DIR [PEAK_TFLOPS]   (reads DIR/gpu.jsonl, writes DIR/report.md)

The fp32 peak the per-layer tables are set against: PEAK_TFLOPS if given, else for an NVIDIA GPU
compute units x 128 fp32 lanes per SM (Ampere GA10x, Ada, Hopper) x 2 (FMA) x the maximum clock
the OpenCL driver reports (H100/H200 SXM: 132 x 128 x 2 x 1.98 GHz = 66.9 TFLOP/s), else none.
"""
import json
import os
import sys


def f(x, nd=3):
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def peak_tflops(tune, given):
    """(TFLOP/s, how it was obtained) or (None, why not)."""
    if given:
        return float(given), "given on the command line"
    if tune and tune.get("type") == "gpu" and "NVIDIA" in tune.get("platform", "") + \
            tune.get("device", "") and tune.get("max_clock_mhz"):
        p = tune["compute_units"] * 128 * 2 * tune["max_clock_mhz"] * 1e6 / 1e12
        return p, (f"{tune['compute_units']} SMs x 128 lanes x 2 x {tune['max_clock_mhz']} MHz "
                   "(the driver's maximum clock)")
    return None, "unknown for this device (give PEAK_TFLOPS)"


def tune_section(tune, peak):
    impls = ("gemm", "direct", "winograd", "clblast")
    L = ["## Convolutions per CPnet layer shape (bench_tune: GEMM tuned, then each implementation)",
         "", f"Device `{tune['device']}` ({tune['platform']}, driver {tune['driver']}), "
         f"{tune['tile']}² tiles in batches of {tune['batch']}, median of {tune['repeats']} runs "
         "after a warm-up; GFLOP/s count 2·H·W·cin·cout·k² per tile (Winograd's as the direct "
         f"equivalent); fp16: cl_khr_fp16 {'reported' if tune.get('fp16_extension') else 'not reported'}, "
         f"half arithmetic {'works' if tune.get('half_arithmetic') else 'does not build or run'}.", "",
         "| k | cin→cout | plane | layers | GEMM set (TM,TH,TW,TK,WM,WN,PAD) | tune s | "
         + " | ".join(f"{i} GFLOP/s" for i in impls) + " | best | best % of peak |",
         "|---|---|---|---|---|---|" + "---|" * len(impls) + "---|---|"]
    est = {i: 0.0 for i in impls}
    est_best = 0.0
    for r in tune["shapes"]:
        g = {i: r["impls"].get(i, {}).get("gflops") for i in impls}
        secs = {i: r["impls"][i]["median_s"] for i in impls if i in r["impls"]}
        best = min(secs, key=secs.get) if secs else None
        bg = g.get(best) if best else None
        pct = f"{100 * bg / (peak * 1e3):.1f}%" if (bg and peak) else "–"
        for i in impls:
            est[i] += r["layers"] * secs.get(i, secs.get("direct", 0))
        est_best += r["layers"] * (secs[best] if best else 0)
        L.append(f"| {r['k']} | {r['cin']}→{r['cout']} | {r['hw']}² | {r['layers']} | "
                 f"{','.join(str(x) for x in r['best'])} | {f(r['tune_s'], 1)} | "
                 + " | ".join(f(x, 1) if x else "–" for x in g.values())
                 + f" | {best} | {pct} |")
    timed = [i for i in impls if any(i in r["impls"] for r in tune["shapes"])]
    L += ["", "Sum over the network's layers (layers × median, one batch; an implementation that "
          "does not take a shape counted at direct's time there; one not timed at all left "
          "out): " + ", ".join(f"{i} {est[i] * 1e3:.2f} ms" for i in timed)
          + f", fastest per shape {est_best * 1e3:.2f} ms. The tuner's sets are in `conv_params.c` "
          "beside this report, ready for src/ops/conv_params.c.", ""]
    return L


def main():
    d = sys.argv[1]
    parts, seg_rows = {}, {}
    for line in open(os.path.join(d, "gpu.jsonl")):
        o = json.loads(line)
        if not o.get("partial"):
            parts[o["part"]] = o
        elif o["part"] == "segment":
            seg_rows.setdefault(o["model"], []).append(o["row"])
    if "result" not in parts.get("segment", {}) and seg_rows:
        # the part failed after its rows were measured (they are written as they come)
        parts["segment_rows"] = {"part": "segment", "result": {
            "note": "rows as measured (the part's closing record was lost: "
                    f"{parts.get('segment', {}).get('error', 'missing')}); library gpuseg_segment "
                    "in one process (start-up excluded); Cellpose: CellposeModel(gpu=True).eval, "
                    "channels [0,0], diameter = diam_labels on both sides",
            "models": [{"model": k, "path": "", "diam_labels": None, "sizes": v}
                       for k, v in seg_rows.items()]}}
        parts["segment"] = parts.pop("segment_rows")
    L = ["# gpuseg on a GPU against Cellpose 3.1 on the same GPU", ""]
    info = parts.get("info", {}).get("result", {})
    if info:
        L += [f"- GPU: {info.get('nvidia_smi')} (nvidia-smi: name, driver, memory, max SM clock)",
              f"- gpuseg's OpenCL device: {info.get('gpuseg_devices', '').splitlines()[:3]}",
              f"- reference: Cellpose {info.get('cellpose')}, PyTorch {info.get('torch')} "
              f"(CUDA {info.get('cuda')}), numpy {info.get('numpy')}",
              f"- host: {info.get('cpu')}, {info.get('nproc')} CPUs; commit {info.get('commit')}",
              "- every time is a median of warm runs after a warm-up (cold runs apart); both "
              "sides ran in the same script, one after the other, on the otherwise idle GPU", ""]
    for name, o in parts.items():
        if "error" in o or "skipped" in o:
            L.append(f"- part `{name}`: {o.get('error') or 'skipped: ' + o['skipped']}")
    seg = parts.get("segment", {}).get("result")
    if seg:
        L += ["", "## Whole pipeline in one process (CellposeModel.eval vs gpuseg_segment)", "",
              seg["note"], ""]
        for m in seg["models"]:
            dl = f", diam_labels {m['diam_labels']:.1f}" if m.get("diam_labels") else ""
            L += [f"### model `{m['model']}` {('(' + m['path'] + dl + ')') if m['path'] else ''}",
                  "", "| image | tiles | gpuseg s (first) | network s | masks s | s per MP | "
                  "Cellpose s | gpuseg / Cellpose | masks (gpuseg / Cellpose) | AP50 vs Cellpose |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
            for r in m["sizes"]:
                L.append(f"| {r['side']}² | {r['tiles']} | {f(r['gpuseg_median_s'], 4)} "
                         f"({f(r['gpuseg_first_s'], 2)}) | {f(r['gpuseg_net_s'], 4)} | "
                         f"{f(r['gpuseg_masks_s'], 4)} | {f(r['gpuseg_s_per_mp'], 4)} | "
                         f"{f(r['cellpose_eval_median_s'], 4)} | "
                         f"{f(r['ratio_gpuseg_over_cellpose'])} | {r['n_masks_gpuseg']} / "
                         f"{r['n_masks_cellpose']} | {f(r['ap50_vs_cellpose'])} |")
            p = m.get("profile_second_largest") or {}
            if p.get("kernels"):
                L += ["", f"Profile (OpenCL events, second-largest image): kernels "
                      f"{f(p['kernel_total_s_per_run'], 4)} s of {f(p['median_s'], 4)} s per run; "
                      "top: " + ", ".join(f"{k['kernel']} {k['s_per_run'] * 1e3:.1f} ms "
                                          f"({k['launches_per_run']:.0f}×)"
                                          for k in p["kernels"][:8])]
            L.append("")
    tune = parts.get("tune", {}).get("result")
    peak, how = peak_tflops(tune, sys.argv[2] if len(sys.argv) > 2 else None)
    if tune:
        L += [f"fp32 peak: {f(peak, 1)} TFLOP/s ({how}).", ""]
        L += tune_section(tune, peak)
    net = parts.get("net", {}).get("result")
    if net and net["results"] and "variants" not in net["results"][0]:
        L += ["## CPnet forward, full-width random weights, batches of 8", "",
              "| image | tiles | gpuseg s (cold) | gpuseg, band layout s | PyTorch fp32 s | "
              "PyTorch TF32 s (default) | gpuseg / fp32 | gpuseg / TF32 | "
              "max err / range (fp32, TF32) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in net["results"]:
            L.append(f"| {r['size']}² | {r['tiles']} | {f(r['gpuseg_median_s'], 4)} "
                     f"({f(r['gpuseg_cold_s'], 2)}) | {f(r.get('gpuseg_band_layout_median_s'), 4)} | "
                     f"{f(r['torch_fp32_median_s'], 4)} | "
                     f"{f(r['torch_tf32_median_s'], 4)} | {f(r['ratio_gpuseg_over_torch_fp32'])} | "
                     f"{f(r['ratio_gpuseg_over_torch_tf32'])} | "
                     f"{r['torch_fp32_err_over_range']:.1e}, {r['torch_tf32_err_over_range']:.1e} |")
        L.append("")
    elif net:
        L += ["## CPnet forward, full-width random weights, batches of 8", "",
              "Targets (issue #15, 2048², 144 tiles): ≤ 1.0× PyTorch fp32 (goal 0.5×; moonshot: "
              "below PyTorch TF32).", "",
              "| image | tiles | variant | gpuseg s (cold) | PyTorch fp32 s | PyTorch TF32 s | "
              "gpuseg / fp32 | gpuseg / TF32 | max err / range vs fp32 |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in net["results"]:
            for v, x in r["variants"].items():
                L.append(f"| {r['size']}² | {r['tiles']} | {v} | {f(x['median_s'], 4)} "
                         f"({f(x['cold_s'], 2)}) | {f(r['torch_fp32_median_s'], 4)} | "
                         f"{f(r['torch_tf32_median_s'], 4)} | {f(x['ratio_over_torch_fp32'])} | "
                         f"{f(x['ratio_over_torch_tf32'])} | "
                         f"{x.get('err_over_range_fp32', float('nan')):.1e} |")
        L.append("")
        last = net["results"][-1]
        if last.get("conv_choices"):
            L += [f"Choices under `{last['variant']}` at {last['size']}²: "
                  + "; ".join(last["conv_choices"]), ""]
        if last.get("profile"):
            L += [f"### Per layer, `{last['variant']}`, {last['size']}² (a pass with a wait "
                  f"after every op: {f(last['profile_total_s'], 4)} s)", "",
                  "| op | s | share | GFLOP/s | % of fp32 peak |", "|---|---|---|---|---|"]
            for p in last["profile"]:
                pct = f"{100 * p['gflops'] / (peak * 1e3):.1f}%" if (peak and p["gflops"]) else "–"
                L.append(f"| {p['op']} | {f(p['s'], 4)} | {f(p['share'])} | "
                         f"{f(p['gflops'], 1) if p['gflops'] else '–'} | {pct} |")
            L.append("")
    masks = parts.get("masks", {}).get("result")
    if masks:
        L += ["## Flows → masks (QC on, niter 200): dynamics.resize_and_compute_masks on CUDA",
              "", "| size | masks (Cellpose / gpuseg) | AP50 | identical pixels | Cellpose s | "
              "gpuseg host API s | gpuseg device API s | speed-up |", "|---|---|---|---|---|---|---|---|"]
        for s in masks["sizes"]:
            L.append(f"| {s['side']}² | {s['n_masks_cellpose']} / {s['n_masks_gpuseg']} | "
                     f"{f(s['ap50'])} | {f(s['identical_pixels'], 4)} | {f(s['cellpose_s'], 4)} | "
                     f"{f(s['gpuseg_host_api_s'], 4)} | {f(s['gpuseg_device_api_s'], 4)} | "
                     f"{s['speedup_host_api']}× |")
        L.append("")
    cli = parts.get("cli", {}).get("result")
    if cli:
        L += ["## Whole programs: `gpuseg segment` vs `python -m cellpose --use_gpu`", "",
              f"{cli['side']}² image, model `{cli['model']}`, wall time with start-up (median of "
              f"3 after one untimed run each): gpuseg {cli['gpuseg_warm_median_s']} s, cellpose "
              f"{cli['cellpose_cli_median_s']} s, ratio {cli['ratio_gpuseg_over_cellpose']}; "
              f"first runs {cli['gpuseg_first_s']} s / {cli['cellpose_first_s']} s; masks "
              f"{cli['n_masks_gpuseg']} / {cli['n_masks_cellpose']}, AP50 {f(cli['ap50'])}.", ""]
    with open(os.path.join(d, "report.md"), "w") as fh:
        fh.write("\n".join(L) + "\n")
    print(os.path.join(d, "report.md"))


if __name__ == "__main__":
    main()
