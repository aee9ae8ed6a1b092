#!/usr/bin/env python3
"""Plots of lowbit_cuda_bench's Google Benchmark JSON: speedup over cuBLAS fp16 against M.

One PNG per shape (K x N) with one line per format (bench-<K>x<N>.png), plus bench-all.png with every
shape as a small panel. The y axis is cuBLAS fp16 time / format time on the same shape and M (> 1 is
faster), the x axis M on a log scale. Reads the counters the harness writes (M, K, N, speedup_vs_cublas);
skipped cases (error_occurred) are left out.

    python3 bench/plot_cuda_bench.py out/bench.json --out out/

Without matplotlib it prints the table it would have drawn and exits 0.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict


def load(path):
    with open(path) as f:
        data = json.load(f)
    series = defaultdict(lambda: defaultdict(dict))  # (K, N) -> format -> M -> speedup
    for b in data.get("benchmarks", []):
        if b.get("error_occurred") or "speedup_vs_cublas" not in b:
            continue
        fmt = b["name"].split("/")[0]
        shape = (int(b["K"]), int(b["N"]))
        series[shape][fmt][int(b["M"])] = float(b["speedup_vs_cublas"])
    return data.get("context", {}), series


def print_table(series):
    for (k, n), formats in sorted(series.items()):
        ms = sorted({m for per_m in formats.values() for m in per_m})
        print(f"{k}x{n}: speedup over cuBLAS fp16")
        print("  {:<26}".format("format") + "".join(f"{m:>7}" for m in ms))
        for fmt, per_m in sorted(formats.items()):
            print("  {:<26}".format(fmt) + "".join(f"{per_m[m]:>7.2f}" if m in per_m else f"{'-':>7}" for m in ms))


def draw(ax, formats, title):
    for fmt, per_m in sorted(formats.items()):
        ms = sorted(per_m)
        ax.plot(ms, [per_m[m] for m in ms], marker="o", markersize=3, label=fmt)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("M")
    ax.set_ylabel("cuBLAS fp16 time / time")
    ax.grid(True, which="both", alpha=0.3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="lowbit_cuda_bench --benchmark_out file")
    parser.add_argument("--out", default=".", help="folder for the PNG files")
    args = parser.parse_args()
    context, series = load(args.json)
    if not series:
        print("plot_cuda_bench: no completed cases in", args.json)
        return 0
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_cuda_bench: matplotlib is not installed; no plots. The data:")
        print_table(series)
        return 0

    os.makedirs(args.out, exist_ok=True)
    device = context.get("device", "")
    written = []
    for (k, n), formats in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(ax, formats, f"K={k} N={n}  {device}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(args.out, f"bench-{k}x{n}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    shapes = sorted(series)
    cols = 3
    rows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for idx, shape in enumerate(shapes):
        draw(axes[idx // cols][idx % cols], series[shape], f"K={shape[0]} N={shape[1]}")
    for idx in range(len(shapes), rows * cols):
        axes[idx // cols][idx % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"speedup over cuBLAS fp16 ({device}; copy bandwidth {context.get('copy_bandwidth_GBps', '?')} GB/s)",
                 y=0.995, fontsize=10)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.96), ncol=7, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path = os.path.join(args.out, "bench-all.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    print("plot_cuda_bench: wrote", ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
