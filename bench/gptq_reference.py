#!/usr/bin/env python3
"""Times the GPTQ reference algorithm (IST-DASLab gptq.py fasterquant with quant.py's Quantizer, as written out in
tests/data/gptq/make_gptq_reference.py: torch, fp32, CPU) on the layers bench/gptq_bench.cpp solves, 2 threads,
and prints its error (sum of Losses) and proxy loss tr((W - Q) H (W - Q)^T) to compare with the C++ bench's
`loss` and `proxy` counters.

    LOWBIT_NUM_THREADS=2 LOWBIT_GPTQ_BENCH_DUMP=/tmp/gptq-bench build/bin/lowbit_bench --benchmark_filter=Gptq
    /tmp/venv-ref/bin/python bench/gptq_reference.py --data /tmp/gptq-bench        (needs torch, safetensors)

The first command writes the bench's W (fp16) and H (fp32) per shape; without --data the script makes its own
layer of the same kind (then only the times compare).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "gptq"))
from make_gptq_reference import fasterquant, proxy_loss  # noqa: E402

# (n, k, group size, act-order): the cases of BM_GptqSolve
CASES = [(4096, 4096, 128, False), (4096, 4096, -1, False), (4096, 4096, 128, True), (11008, 4096, 128, False),
         (11008, 4096, 128, True)]


def own_layer(n, k):
    """W ~ N(0, 0.02) in fp16; H = 2 D (I + B B^T) D as the C++ bench builds it (with another random generator):
    the covariance of inputs with 32 shared latent factors, every 509th channel x20."""
    g = torch.Generator().manual_seed(7)
    w = (torch.randn((n, k), generator=g) * 0.02).to(torch.float16)
    b = torch.randn((k, 32), generator=g, dtype=torch.float64) * 0.5
    d = 0.5 + 1.5 * torch.rand(k, generator=g, dtype=torch.float64)
    d[7::509] = 20.0
    h = 2.0 * d[:, None] * (torch.eye(k, dtype=torch.float64) + b @ b.T) * d[None, :]
    return w, h.float()


def load_layer(folder, n, k):
    from safetensors.torch import load_file
    t = load_file(os.path.join(folder, "gptq_%dx%d.safetensors" % (n, k)))
    return t["W"], t["H"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with the C++ bench's gptq_<n>x<k>.safetensors")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; the best time is printed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", type=int, action="append", help="run only these cases (0-based, repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("torch %s, %d threads, %s" % (torch.__version__, torch.get_num_threads(),
                                        "bench data from " + args.data if args.data else "own data"))
    layers = {}
    for index, (n, k, group, act) in enumerate(CASES):
        if args.case and index not in args.case:
            continue
        if (n, k) not in layers:
            layers[(n, k)] = load_layer(args.data, n, k) if args.data else own_layer(n, k)
        w, h = layers[(n, k)]
        wf, hf = w.float(), h.float()
        best, best_cpu, r = float("inf"), float("inf"), None
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            r = fasterquant(wf, hf, 4, False, group, act)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        print("reference fasterquant n=%5d k=%d group=%4d act=%d: %8.1f ms wall (%8.1f ms process CPU)  "
              "loss %.6g  proxy %.6g" % (n, k, group, act, best * 1e3, best_cpu * 1e3, r["error"],
                                         proxy_loss(wf, hf, r["Q"])), flush=True)


if __name__ == "__main__":
    main()
