#!/usr/bin/env python3
"""hqq's own quantize/dequantize on the CPU, on the matrices bench/hqq_bench.cpp uses (fp16 4096x4096 and
11008x4096, 4 bit, group 64, axis 1, BaseQuantizeConfig's optimize + round_zero), 2 threads. Prints GB/s of the
fp16 weight bytes, like the C++ bench.

    /tmp/venv-ref/bin/python bench/hqq_reference.py          (needs torch and hqq)
"""
import time

import torch
from hqq.core.quantize import Quantizer


def best_of(fn, repeats):
    """Best wall-clock time and best process CPU time (all threads) over `repeats` runs."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def main():
    torch.set_num_threads(2)
    print("torch %s, %d threads" % (torch.__version__, torch.get_num_threads()))
    for n, k in [(4096, 4096), (11008, 4096)]:
        g = torch.Generator().manual_seed(7)
        w = (torch.randn((n, k), generator=g) * 0.02).to(torch.float16)
        nbytes = w.numel() * 2

        def quantize():
            return Quantizer.quantize(w, nbits=4, channel_wise=True, group_size=64, optimize=True, round_zero=True,
                                      axis=1, bitpack=True, device="cpu")

        t_q, c_q, (w_q, meta) = best_of(quantize, 2)
        # HQQLinear stores scale/zero in its compute dtype (fp16) and dequantizes in it.
        meta["compute_dtype"] = torch.float16
        meta["scale"] = meta["scale"].to(torch.float16)
        meta["zero"] = meta["zero"].to(torch.float16)
        t_d, c_d, _ = best_of(lambda: Quantizer.dequantize(w_q, meta), 5)
        for what, t, c in (("quantize  ", t_q, c_q), ("dequantize", t_d, c_d)):
            print("hqq Quantizer.%s %5dx%d: %9.1f ms wall (%9.1f ms process CPU)  %.3f GB/s" %
                  (what, n, k, t * 1e3, c * 1e3, nbytes / t / 1e9))


if __name__ == "__main__":
    main()
