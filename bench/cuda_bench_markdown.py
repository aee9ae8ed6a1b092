#!/usr/bin/env python3
"""Markdown tables of lowbit_cuda_bench's Google Benchmark JSON, for docs/benchmarks.md.

One table per format: a row per shape (K x N), a column per M, each cell "time us / speed-up over cuBLAS fp16 /
fraction of the measured copy bandwidth" (bytes as the harness counts them: weight bytes + activations in and
out, over time, over the copy bandwidth measured in the same process). cuBLAS fp16's own table gives its times.

    python3 bench/cuda_bench_markdown.py out/bench.json > tables.md
"""
import argparse
import json
from collections import defaultdict


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    ctx = data.get("context", {})
    cells = defaultdict(dict)  # format -> (K, N) -> M -> (us, speedup, frac)
    ms = set()
    for b in data.get("benchmarks", []):
        if b.get("error_occurred") or "time_us" not in b:
            continue
        fmt = b["name"].split("/")[0]
        shape = (int(b["K"]), int(b["N"]))
        m = int(b["M"])
        ms.add(m)
        cells[fmt].setdefault(shape, {})[m] = (b["time_us"], b.get("speedup_vs_cublas", 1.0), b.get("frac_copy_bw", 0))
    ms = sorted(ms)
    print("Device: %s; copy bandwidth %s GB/s (measured in the same run); cuBLAS: %s; %s." % (
        ctx.get("device", "?"), ctx.get("copy_bandwidth_GBps", "?"), ctx.get("cublas", "?"), ctx.get("timing", "?")))
    for fmt in sorted(cells, key=lambda f: (f != "cublas_fp16", f)):
        print()
        print("**%s** (us / speed-up over cuBLAS fp16 / fraction of copy bandwidth)" % fmt)
        print()
        print("| K x N | " + " | ".join("M=%d" % m for m in ms) + " |")
        print("|---|" + "---:|" * len(ms))
        for shape in sorted(cells[fmt], key=lambda s: (s[0] * s[1], s)):
            row = cells[fmt][shape]
            out = []
            for m in ms:
                if m in row:
                    us, sp, fr = row[m]
                    out.append("%.1f / %.2f / %.2f" % (us, sp, fr))
                else:
                    out.append("")
            print("| %dx%d | %s |" % (shape[0], shape[1], " | ".join(out)))


if __name__ == "__main__":
    main()
