"""The command line, the weights and the timer the bitsandbytes reference scripts share (bnb8_reference.py,
nf4_reference.py, llm_int8_reference.py). Run as `python3 bench/X_reference.py`, Python puts bench/ on
sys.path, so they import this module from any working directory.
"""
import argparse
import time

import torch


def parse_args():
    """--repeat (timed calls per row, the best is printed) and --threads (torch's threads, 2 by default like
    the lowbit_bench runs they compare with); sets torch's thread count before any work."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def fp16_weights(generator=None):
    """(n, k, w) for the Llama-7B shapes the C++ benchmarks time, 4096x4096 then 11008x4096: w is N(0, 0.02)
    in fp16, drawn from generator (torch's global one when None) as the loop reaches it."""
    for n, k in ((4096, 4096), (11008, 4096)):
        yield n, k, (torch.randn(n, k, generator=generator) * 0.02).to(torch.float16)


def best_seconds(fn, repeat):
    fn()  # warm-up (and torch.compile, where bitsandbytes uses it)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
