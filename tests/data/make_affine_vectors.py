#!/usr/bin/env python3
"""Writes the affine golden vectors that tests/quant/affine_test.cpp reads (tests/data/affine/).

Two references, each run as published, on the CPU:

  gptq   the GPTQ reference quantizer itself: quant.py of IST-DASLab/gptq (commit 2d65066e), imported from
         a checkout given with --gptq-repo. Round-to-nearest per row (perchannel=True), per group (as
         fasterquant does it: find_params on each group of columns, the last group shorter when k is not a
         multiple of the group size) and per tensor (perchannel=False). Codes are
         clamp(round(w / scale) + zero, 0, maxq), the expression quant.quantize() evaluates.
  bnb    bitsandbytes' int8_vectorwise_quant / int8_vectorwise_dequant (LLM.int8() weights: per-row absmax)
         on its PyTorch backend, which int8.md section 2.1 says lowbit's rule matches bit for bit.

    git clone https://github.com/IST-DASLab/gptq /tmp/gptq
    pip install torch numpy safetensors bitsandbytes
    python3 tests/data/make_affine_vectors.py --gptq-repo /tmp/gptq      # writes tests/data/affine/

Inputs are fixed by a seed; rerunning reproduces the files bit for bit (torch 2.x, CPU).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

SEED = 20260812
N, K = 16, 200  # k = 200: groups of 32 leave a last group of 8, groups of 128 one of 72


def make_weight(rng):
    w = rng.standard_normal((N, K)).astype(np.float32) * 0.02
    mask = rng.random((N, K)) < 0.01
    w[mask] *= 25.0                   # outliers
    w[3, :] = np.abs(w[3, :])         # no negatives: GPTQ's symmetric quirk keeps xmin = 0
    w[5, 32:64] = 0.0                 # an all-zero group (of 32)
    w[7, :] = 0.0                     # an all-zero row
    w[9, 100:140] = -np.abs(w[9, 100:140])
    return torch.from_numpy(w)


def gptq_rtn(quant, w, bits, sym, group_size):
    """(codes u8 [n, k], scale f32 [n, groups], zero u8 [n, groups], dequant f32 [n, k]) from quant.py."""
    maxq = 2 ** bits - 1
    q = quant.Quantizer()
    if group_size == 0:
        q.configure(bits, perchannel=False, sym=sym, mse=False)
        q.find_params(w, weight=True)
        scale, zero = q.scale, q.zero  # [n, 1], the one value repeated
        codes = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
        return codes, scale[:1, :1], zero[:1, :1], quant.quantize(w, scale, zero, q.maxq)
    q.configure(bits, perchannel=True, sym=sym, mse=False)
    g = K if group_size == -1 else group_size
    codes, deq, scales, zeros = [], [], [], []
    for i in range(0, K, g):
        part = w[:, i:i + g]
        q.find_params(part, weight=True)
        codes.append(torch.clamp(torch.round(part / q.scale) + q.zero, 0, maxq))
        deq.append(quant.quantize(part, q.scale, q.zero, q.maxq))
        scales.append(q.scale)
        zeros.append(q.zero)
    return torch.cat(codes, 1), torch.cat(scales, 1), torch.cat(zeros, 1), torch.cat(deq, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gptq-repo", required=True, help="a checkout of IST-DASLab/gptq (quant.py is imported)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "affine"))
    args = parser.parse_args()
    sys.path.insert(0, args.gptq_repo)
    import quant  # IST-DASLab/gptq quant.py

    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    w = make_weight(rng)
    tensors = {"gptq.weight": w.contiguous()}
    cases = []
    settings = [(b, s, g) for b in (2, 3, 4, 8) for s in (False, True) for g in (32, 128)]
    settings += [(b, s, -1) for b in (4, 8) for s in (False, True)]
    settings += [(4, s, 0) for s in (False, True)]
    for bits, sym, group in settings:
        name = f"gptq.b{bits}_{'sym' if sym else 'asym'}_g{group}"
        codes, scale, zero, deq = gptq_rtn(quant, w, bits, sym, group)
        assert torch.equal(zero, torch.round(zero)) and zero.min() >= 0 and zero.max() <= 2 ** bits - 1
        tensors[name + ".codes"] = codes.to(torch.uint8).contiguous()
        tensors[name + ".scales"] = scale.float().contiguous()
        tensors[name + ".zeros"] = zero.to(torch.uint8).contiguous()
        if bits == 4 and group == 32:  # the reference's own dequantized values for two settings
            tensors[name + ".dequant"] = deq.float().contiguous()
        cases.append({"name": name, "bits": bits, "symmetric": sym, "group_size": group})

    # bitsandbytes vector-wise int8 on fp16 rows; row 2 gets a power-of-two absmax (127 / a exact).
    import bitsandbytes
    import bitsandbytes.functional as F
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    a = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32) * 0.05).to(torch.float16)
    a[2, 17] = 0.25
    a[2] = a[2].clamp(-0.25, 0.25)
    cb, scb, _ = torch.ops.bitsandbytes.int8_vectorwise_quant.default.redispatch(keys, a.clone(), 0.0)
    tensors["bnb_int8.weight"] = a.contiguous()
    tensors["bnb_int8.CB"] = cb.contiguous()
    tensors["bnb_int8.SCB"] = scb.contiguous()
    tensors["bnb_int8.dequant"] = F.int8_vectorwise_dequant(cb, scb).float().contiguous()

    meta = {
        "generator": "tests/data/make_affine_vectors.py",
        "seed": SEED,
        "gptq": "IST-DASLab/gptq quant.py (Quantizer.configure/find_params, quantize), commit 2d65066e, CPU",
        "bnb_int8": f"bitsandbytes {bitsandbytes.__version__} int8_vectorwise_quant, PyTorch (default) backend, CPU",
        "torch": torch.__version__,
        "shape": [N, K],
        "cases": cases,
    }
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "affine_vectors.safetensors"))
    with open(os.path.join(args.out, "affine_vectors.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
