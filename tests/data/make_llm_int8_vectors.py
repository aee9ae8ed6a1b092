#!/usr/bin/env python3
"""Golden vectors for lowbit's LLM.int8() (tests/quant/llm_int8_test.cpp), made by bitsandbytes itself.

Run with a Python that has torch, safetensors and bitsandbytes (>= 0.45; made with 0.50.2 on a CPU):

    /tmp/venv-ref/bin/python tests/data/make_llm_int8_vectors.py [--device cpu|cuda]

With --device cpu (the committed files) the numerics are bitsandbytes' PyTorch ("default") backend plus
its CPU int8 GEMM (torch._int_mm, exact int32): the C++ test compares these outputs with
LlmInt8Backend::Torch and the weight/activation codes with our quantizers byte for byte.
With --device cuda (on a GPU) the same inputs go through bitsandbytes' CUDA kernels and the results land
in vectors_cuda.safetensors / vectors_cuda.json, which LlmInt8Golden.CudaKernelsMatchCudaBackend reads
when present (it skips otherwise).

Writes tests/data/llm_int8/:
  vectors.safetensors    inputs and bitsandbytes' outputs (names below)
  linear8bitlt.safetensors  a Linear8bitLt state_dict (weight = CB, SCB, weight_format, bias) saved with
                         safetensors: the golden checkpoint our reader must load (and our writer reproduce)
  linear8bitlt_source.safetensors  the fp16 weight and bias that layer was made from
  vectors.json           versions, thresholds and which tensor is which
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import bitsandbytes as bnb
import bitsandbytes.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llm_int8")
THRESHOLD = 6.0


def weight_f16(rng, n, k):
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    w[0, :] = 0.0                                   # all-zero row: SCB 0, codes 0
    w[1, :] = rng.uniform(-1, 1, k) * 2.0**-18      # fp16 subnormals only
    w[2, :5] = [0.5, -0.5, 0.25, 0.125, -0.125]     # +max and -max tie
    w[2, 5:] *= 0.1
    w[3, 7] = 300.0                                 # one large value squeezes the row
    w[4, :] = np.linspace(-1, 1, k)                 # many values near .5 code boundaries
    w[5, 0] = 1.0
    w[5, 1:] = (np.arange(1, k) % 255 - 127) / 127.0 * 0.999
    # absmax 2.859375: PyTorch's 127.0 / a is a.reciprocal() * 127 = 44.415298, so a / 2 -> 63.499996 -> 63
    # (an IEEE division would give 44.415302 -> 63.500004 -> 64)
    w[6, :] *= 0.5
    w[6, :3] = [2.859375, 1.4296875, -1.4296875]
    return torch.from_numpy(w).to(torch.float16)


def activations(rng, m, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, 5] *= 3.0
    x[0, 5] = 6.0             # exactly the threshold: an outlier (>=)
    x[1, 17] = -9.5           # negative outlier
    x[1, 5] = 0.25            # a small inlier inside outlier column 5 (zeroed in CA since m > 1)
    x[2, :] = 0.0             # all-zero row
    x[3, 17] = 1.75           # row 3: inlier in outlier column 17 larger than the rest -> sets SCA
    x[3, :17] *= 0.1
    x[3, 18:] *= 0.1
    x[4, 40] = 5.998          # fp16 5.99609375: just below the threshold, not an outlier (bf16 6.0: is one)
    x[7, :] = np.clip(x[7, :], -2.8, 2.8)
    x[7, :3] = [2.859375, 1.4296875, -1.4296875]   # reciprocal vs division (see weight_f16 row 6)
    return x


def write_json(path, meta):
    with open(path, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    dev = parser.parse_args().device
    suffix = "" if dev == "cpu" else "_" + dev
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20260819)
    t = {}

    def vq(a, threshold=0.0):  # int8_vectorwise_quant on `dev`, results on the host
        out = F.int8_vectorwise_quant(a.to(dev).clone(), threshold=threshold)
        return tuple(None if v is None else v.cpu() for v in out)

    # ---- weight quantization (Int8Params._quantize: int8_vectorwise_quant(W.to(float16))) ----------------
    w16 = weight_f16(rng, 37, 70)
    t["w_f16"] = w16
    t["w_f16.CB"], t["w_f16.SCB"], _ = vq(w16)
    w_bf16 = (torch.from_numpy(rng.standard_normal((16, 64)).astype(np.float32)) * 0.02).to(torch.bfloat16)
    t["w_bf16"] = w_bf16
    t["w_bf16.CB"], t["w_bf16.SCB"], _ = vq(w_bf16.to(torch.float16))
    w_f32 = torch.from_numpy(rng.standard_normal((16, 64)).astype(np.float32)) * 0.02
    w_f32[3, 3] = 1.0 + 2.0**-12    # rounds to fp16 1.0 (tie to even) before quantization
    t["w_f32"] = w_f32
    t["w_f32.CB"], t["w_f32.SCB"], _ = vq(w_f32.to(torch.float16))

    # ---- activation quantization with outliers ---------------------------------------------------------
    x = activations(rng, 9, 70)
    x16 = torch.from_numpy(x).to(torch.float16)
    t["x_f16"] = x16
    ca, sca, cols = vq(x16, THRESHOLD)
    t["x_f16.CA"], t["x_f16.SCA"], t["x_f16.cols"] = ca, sca, cols
    ca, sca, _ = vq(x16)
    t["x_f16.CA_t0"], t["x_f16.SCA_t0"] = ca, sca
    x1 = x16[1:2].clone()                         # m = 1: only the outlier elements are zeroed
    t["x1_f16"] = x1
    ca, sca, cols = vq(x1, THRESHOLD)
    t["x1_f16.CA"], t["x1_f16.SCA"], t["x1_f16.cols"] = ca, sca, cols

    # ---- Linear8bitLt forward --------------------------------------------------------------------------
    bias16 = torch.from_numpy(rng.standard_normal(37).astype(np.float32) * 0.1).to(torch.float16)
    t["bias_f16"] = bias16

    def layer(threshold, bias=True):
        lin = bnb.nn.Linear8bitLt(70, 37, bias=bias, has_fp16_weights=False, threshold=threshold)
        lin.weight = bnb.nn.Int8Params(w16.clone(), has_fp16_weights=False, requires_grad=False)
        if bias:
            lin.bias = torch.nn.Parameter(bias16.clone(), requires_grad=False)
        lin = lin.to(dev)  # quantizes here
        lin.eval()
        return lin

    def forward(lin, inp):
        with torch.no_grad():
            return lin(inp.to(dev)).cpu()

    # fp16 activations, threshold 6 (outlier columns 5 and 17), with and without bias
    t["y_f16"] = forward(layer(THRESHOLD), x16)
    t["y_f16_nobias"] = forward(layer(THRESHOLD, bias=False), x16)
    # bf16 and fp32 activations: cast to fp16 for quantization, outliers kept in the input dtype
    x_bf16 = torch.from_numpy(x).to(torch.bfloat16)
    t["x_bf16"] = x_bf16
    t["y_bf16"] = forward(layer(THRESHOLD), x_bf16)
    x_f32 = torch.from_numpy(x).clone()
    x_f32[6, 30] = 70000.0   # overflows fp16 -> Inf -> outlier column, exact in the fp32 outlier product
    t["x_f32"] = x_f32
    t["y_f32"] = forward(layer(THRESHOLD), x_f32)
    # threshold 0: no decomposition; small activations
    xs = torch.from_numpy(rng.standard_normal((5, 70)).astype(np.float32)).to(torch.float16)
    t["xs_f16"] = xs
    t["ys_f16_t0"] = forward(layer(0.0), xs)
    # 3-D input [2, 3, 70]
    x3 = x16[:6].reshape(2, 3, 70).clone()
    t["x3_f16"] = x3
    t["y3_f16"] = forward(layer(THRESHOLD), x3)

    t = {k: v.contiguous() for k, v in t.items()}
    save_file(t, os.path.join(OUT, f"vectors{suffix}.safetensors"), metadata={"bitsandbytes": bnb.__version__})
    meta = {
        "made_by": "tests/data/make_llm_int8_vectors.py",
        "bitsandbytes": bnb.__version__,
        "torch": torch.__version__,
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threshold": THRESHOLD,
        "x_f16.cols": t["x_f16.cols"].tolist(),
        "x1_f16.cols": t["x1_f16.cols"].tolist(),
        "notes": "y_* are Linear8bitLt(70 -> 37).forward; on a CPU that is bitsandbytes' PyTorch backend "
                 "(int8_mm_dequant with 6.200124e-05, bias added in fp32, cast straight to x's dtype), on a GPU "
                 "its CUDA kernels.",
    }
    if dev != "cpu":
        write_json(os.path.join(OUT, f"vectors{suffix}.json"), meta)
        return

    # ---- golden checkpoint: a Linear8bitLt state_dict ------------------------------------------------------
    rng2 = np.random.default_rng(7)
    src = torch.from_numpy(rng2.standard_normal((24, 40)).astype(np.float32) * 0.05).to(torch.float16)
    src_bias = torch.from_numpy(rng2.standard_normal(24).astype(np.float32)).to(torch.float16)
    lin = bnb.nn.Linear8bitLt(40, 24, bias=True, has_fp16_weights=False, threshold=THRESHOLD)
    lin.weight = bnb.nn.Int8Params(src.clone(), has_fp16_weights=False, requires_grad=False)
    lin.bias = torch.nn.Parameter(src_bias.clone(), requires_grad=False)
    lin = lin.to("cpu")
    model = torch.nn.Module()
    model.proj = lin
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(OUT, "linear8bitlt.safetensors"))
    save_file({"proj.weight_f16": src, "proj.bias_f16": src_bias},
              os.path.join(OUT, "linear8bitlt_source.safetensors"))

    meta["checkpoint_keys"] = {k: [str(v.dtype), list(v.shape)] for k, v in sd.items()}
    write_json(os.path.join(OUT, "vectors.json"), meta)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
