#!/usr/bin/env python3
"""Times bitsandbytes' CPU 4-bit quantization on the matrices bench/nf4_bench.cpp uses: fp16 N(0, 0.02)
weights of 4096x4096 and 11008x4096, block 64, two threads (torch.set_num_threads(2)). Prints GB/s of fp16
weight per second, the unit lowbit_bench reports.

    quantize_4bit     nf4, nf4 + double quant (compress_statistics), fp4: on a CPU tensor bitsandbytes
                      runs its PyTorch reference kernel (backends/default) and, for double quantization,
                      its C++ CPU quantize_blockwise
    dequantize_4bit   into fp16 (the weight's dtype), bitsandbytes' C++ CPU kernel

    pip install bitsandbytes torch
    python3 bench/nf4_reference.py [--repeat 5] [--threads 2]
"""
import torch

import bitsandbytes
import bitsandbytes.functional as F

from reference_common import best_seconds, fp16_weights, parse_args


def main():
    args = parse_args()
    print(f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(7)
    for n, k, w in fp16_weights(g):
        nbytes = w.numel() * 2
        for name, qt, dq in (("nf4", "nf4", False), ("nf4_dq", "nf4", True), ("fp4", "fp4", False)):
            t = best_seconds(lambda: F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=dq),
                             args.repeat)
            print(f"quantize_4bit   {name:7s} {n}x{k}: {t * 1e3:8.1f} ms  {nbytes / t / 1e9:6.2f} GB/s", flush=True)
            q, state = F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=dq)
            t = best_seconds(lambda: F.dequantize_4bit(q, state), args.repeat)
            print(f"dequantize_4bit {name:7s} {n}x{k}: {t * 1e3:8.1f} ms  {nbytes / t / 1e9:6.2f} GB/s", flush=True)


if __name__ == "__main__":
    main()
