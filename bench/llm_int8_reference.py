#!/usr/bin/env python3
"""Times bitsandbytes' LLM.int8() on the CPU beside bench/llm_int8_bench.cpp: fp16 N(0, 0.02) weights of
4096x4096 and 11008x4096, two threads (torch.set_num_threads(2)). Prints GB/s of fp16 weight, the unit
lowbit_bench reports, and the time of a Linear8bitLt forward at m = 16 for information.

    int8_vectorwise_quant(W)    what Int8Params._quantize runs (PyTorch backend on a CPU)
    int8_vectorwise_dequant     CB * SCB * (1/127) in fp32
    Linear8bitLt forward        m = 16 fp16 activations, threshold 6 (~1% outlier columns)

    pip install bitsandbytes torch
    python3 bench/llm_int8_reference.py [--repeat 5] [--threads 2]
"""
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

from reference_common import best_seconds, fp16_weights, parse_args


def main():
    args = parse_args()
    torch.manual_seed(7)
    print(f"bitsandbytes {bnb.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; best of {args.repeat}")
    for n, k, w in fp16_weights():
        gb = w.numel() * 2 / 1e9
        cb, scb, _ = F.int8_vectorwise_quant(w)
        rows = [
            ("int8_vectorwise_quant (Int8Params)", lambda: F.int8_vectorwise_quant(w)),
            ("int8_vectorwise_dequant", lambda: F.int8_vectorwise_dequant(cb, scb)),
        ]
        for name, fn in rows:
            s = best_seconds(fn, args.repeat)
            print(f"{n}x{k} {name:36s} {s * 1e3:9.2f} ms  {gb / s:7.3f} GB/s")

    n = k = 4096
    m = 16
    lin = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=6.0)
    lin.weight = bnb.nn.Int8Params((torch.randn(n, k) * 0.02).to(torch.float16), has_fp16_weights=False,
                                   requires_grad=False)
    lin = lin.to("cpu")
    lin.eval()
    x = torch.randn(m, k).to(torch.float16)
    x[torch.arange(0, k, 97) % m, torch.arange(0, k, 97)] = 8.0
    with torch.no_grad():
        s = best_seconds(lambda: lin(x), args.repeat)
    print(f"Linear8bitLt forward m={m} {n}x{k} (threshold 6)   {s * 1e3:9.2f} ms  "
          f"{m * n * k / s / 1e9:7.3f} G multiply-adds/s")


if __name__ == "__main__":
    main()
