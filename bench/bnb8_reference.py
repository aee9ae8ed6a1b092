#!/usr/bin/env python3
"""Times bitsandbytes on the CPU on the matrices bench/bnb8_bench.cpp and bench/affine_bench.cpp use:
fp16 N(0, 0.02) weights of 4096x4096 and 11008x4096, two threads (torch.set_num_threads(2)). Prints GB/s
of fp16 weight per second, the unit lowbit_bench reports.

    quantize_blockwise / dequantize_blockwise   (block 4096, dynamic map; bnb's C++ CPU backend, which is
                                                 what functional.py runs on a CPU tensor)
    int8_vectorwise_quant                       (per-row absmax INT8: lowbit's affine "int8")

    pip install bitsandbytes torch
    python3 bench/bnb8_reference.py [--repeat 5]
"""
import torch

import bitsandbytes
import bitsandbytes.functional as F

from reference_common import best_seconds, fp16_weights, parse_args


def main():
    args = parse_args()
    torch.manual_seed(7)
    print(f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"best of {args.repeat}")
    for n, k, a in fp16_weights():
        gb = a.numel() * 2 / 1e9
        q, state = F.quantize_blockwise(a, blocksize=4096)
        rows = [
            ("quantize_blockwise b4096", lambda: F.quantize_blockwise(a, blocksize=4096)),
            ("quantize_blockwise b4096 nested", lambda: F.quantize_blockwise(a, blocksize=4096, nested=True)),
            ("dequantize_blockwise b4096", lambda: F.dequantize_blockwise(q, state)),
            ("int8_vectorwise_quant (per row)", lambda: F.int8_vectorwise_quant(a)),
        ]
        for name, fn in rows:
            s = best_seconds(fn, args.repeat)
            print(f"{n}x{k} {name:34s} {s * 1e3:9.2f} ms  {gb / s:7.3f} GB/s")


if __name__ == "__main__":
    main()
