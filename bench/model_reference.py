#!/usr/bin/env python3
"""transformers' LlamaForCausalLM on stories15M, fp32, PyTorch CPU on 2 threads: the same measurements as
bench/model_bench.cpp (prefill of 256 tokens; 128 tokens decoded one at a time through the KV cache after a
10-token prompt), in tokens/s, for comparison on the same machine.

    /tmp/venv-ref/bin/python bench/model_reference.py [--shared ../shared/data] [--threads 2] [--repeats 5]

Prints the median of the repeats. Token ids are random (seeded), BOS first, as in model_bench.cpp; the
speed does not depend on which ids they are.
"""
import argparse
import os
import statistics
import time

import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = os.path.join(args.shared, "stories15M")
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 32000, (1, 256), generator=g)
    ids[0, 0] = 1

    with torch.inference_mode():
        model(ids)  # warm-up
        prefill = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(ids)
            prefill.append(time.perf_counter() - t0)

        decode = []
        steps = ids[0, 10:138]
        for _ in range(args.repeats):
            out = model(ids[:, :10], use_cache=True)
            cache = out.past_key_values
            t0 = time.perf_counter()
            for tok in steps:
                out = model(tok.view(1, 1), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            decode.append(time.perf_counter() - t0)

        greedy = []
        prompt = ids[:, :10]
        for _ in range(max(1, args.repeats // 2)):
            t0 = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=128, min_new_tokens=128, do_sample=False)
            greedy.append(time.perf_counter() - t0)

    p, d, gen = statistics.median(prefill), statistics.median(decode), statistics.median(greedy)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    print(f"prefill 256 tokens:            {1e3 * p:8.1f} ms  {256 / p:8.0f} tokens/s")
    print(f"decode 128 tokens (KV cache):  {1e3 * d:8.1f} ms  {128 / d:8.0f} tokens/s")
    print(f"generate() 128 greedy tokens:  {1e3 * gen:8.1f} ms  {128 / gen:8.0f} tokens/s (prefill of 10 included)")


if __name__ == "__main__":
    main()
