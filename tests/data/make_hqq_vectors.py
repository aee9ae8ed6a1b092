#!/usr/bin/env python3
"""Golden vectors for lowbit's HQQ quantizer and HQQ checkpoint reader, made by hqq itself on CPU.

    /tmp/venv-ref/bin/python tests/data/make_hqq_vectors.py      (needs torch, safetensors, hqq; transformers
                                                                 optional, for config.json's quantization_config)

Writes tests/data/hqq/:
  vectors.safetensors   per case "<case>.W" (the input), "<case>.W_q" (packed codes), "<case>.scale",
                        "<case>.zero" (fp32, as Quantizer.quantize returns them on CPU)
  vectors.json          per case: settings, packing, and the solver's per-iteration error (the value
                        optimize_weights_proximal_legacy compares for its early stop)
  hqq_linear.safetensors  HQQLinear.state_dict() (the encoded, safetensors form that transformers saves) of a
                        few layers, keys "<layer>.<key>"
  hqq_linear_source.safetensors  the layers' original weights "<layer>.weight" and biases, and
                        HQQLinear.dequantize() "<layer>.dequant" (in the layer's compute dtype)
  hqq_linear.json       the layers' settings; config.json's quantization_config as transformers writes it

Cases marked solver "f16" emulate hqq's CUDA path (the solver runs in fp16 when the device is CUDA) by running
hqq's own solver step on fp16 tensors on the CPU: each op rounds to fp16 as on the GPU; only the summation order
inside means may differ from a GPU's. Cases marked "beta_schedule" reproduce hqq <= 0.2.6's beta *= kappa.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import hqq
from hqq.core.bitpack import BitPack
from hqq.core.optimize import optimize_weights_proximal_legacy_step
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear, Quantizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hqq")


def make_weight(shape, kind, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float32)
    if kind == "normal":
        w = w * 0.02
    elif kind == "unit":
        pass
    elif kind == "outliers":  # wide groups: the shrinkage is active even at 4 bit (range > ~5.1)
        w = w * 0.5
        mask = torch.rand(shape, generator=g) < 0.03
        w[mask] = w[mask] * 20.0
    elif kind == "constant":  # all-zero groups, constant groups and ordinary ones
        w = w * 0.02
        flat = w.view(-1)
        flat[0:64] = 0.0  # one all-zero axis-1 group of 64 (and the start of others)
        flat[64:128] = 0.25  # a constant non-zero group
        flat[128:192] = -3.0
    else:
        raise ValueError(kind)
    return w.to(dtype)


# name, shape, kind, seed, input dtype, nbits, group_size (None = per row/column), axis, optimize, round_zero,
# solver ("f32" = Quantizer.quantize on CPU; "f16" = the CUDA path emulated), beta_schedule
CASES = [
    ("b4_g64_ax1", (16, 128), "normal", 1, torch.float16, 4, 64, 1, True, True, "f32", False),
    ("b4_g64_ax0", (16, 128), "normal", 1, torch.float16, 4, 64, 0, True, True, "f32", False),
    ("b4_g64_ax1_rtn", (16, 128), "normal", 1, torch.float16, 4, 64, 1, False, False, "f32", False),
    ("b4_g16_ax0_rtn", (16, 128), "normal", 1, torch.float16, 4, 16, 0, False, False, "f32", False),
    ("b4_g32_ax1_outliers", (8, 128), "outliers", 2, torch.float32, 4, 32, 1, True, True, "f32", False),
    ("b4_g32_ax0_outliers", (8, 128), "outliers", 2, torch.float32, 4, 32, 0, True, False, "f32", False),
    ("b4_g64_ax1_constant", (8, 128), "constant", 3, torch.float32, 4, 64, 1, True, True, "f32", False),
    ("b4_g64_ax0_constant", (8, 128), "constant", 3, torch.float32, 4, 64, 0, True, False, "f32", False),
    ("b4_none_ax0", (24, 40), "normal", 4, torch.float16, 4, None, 0, True, True, "f32", False),
    ("b4_none_ax1", (24, 40), "normal", 4, torch.float16, 4, None, 1, True, True, "f32", False),
    ("b4_g8_ax0_odd", (5, 24), "unit", 5, torch.float32, 4, 8, 0, True, True, "f32", False),
    ("b3_g32_ax1", (18, 96), "normal", 6, torch.float16, 3, 32, 1, True, False, "f32", False),
    ("b3_g16_ax0", (18, 96), "normal", 6, torch.float16, 3, 16, 0, True, False, "f32", False),
    ("b3_g8_ax1_odd", (3, 40), "unit", 7, torch.float32, 3, 8, 1, True, False, "f32", False),
    ("b2_g16_ax1", (16, 64), "unit", 8, torch.float32, 2, 16, 1, True, False, "f32", False),
    ("b2_g32_ax0", (16, 64), "unit", 8, torch.float32, 2, 32, 0, True, False, "f32", False),
    ("b1_g8_ax1", (8, 64), "unit", 9, torch.float32, 1, 8, 1, True, False, "f32", False),
    ("b1_g16_ax0", (8, 64), "unit", 9, torch.float32, 1, 16, 0, True, False, "f32", False),
    ("b8_g128_ax1", (8, 256), "normal", 10, torch.float16, 8, 128, 1, True, False, "f32", False),
    ("b6_g32_ax0", (8, 96), "normal", 11, torch.float16, 6, 32, 0, True, False, "f32", False),
    ("b5_g64_ax1", (8, 128), "unit", 12, torch.float32, 5, 64, 1, True, False, "f32", False),
    ("b8_g16_ax1_odd", (3, 40), "unit", 7, torch.float32, 8, 8, 1, True, False, "f32", False),
    ("f16_b4_g64_ax1", (16, 128), "normal", 1, torch.float16, 4, 64, 1, True, True, "f16", False),
    ("f16_b2_g16_ax0", (16, 64), "unit", 8, torch.float16, 2, 16, 0, True, False, "f16", False),
    ("f16_b3_g32_ax1_outliers", (8, 120), "outliers", 2, torch.float16, 3, 32, 1, True, False, "f16", False),
    ("kappa_b2_g16_ax1", (16, 64), "unit", 8, torch.float32, 2, 16, 1, True, False, "f32", True),
]

OPT = {"lp_norm": 0.7, "beta": 1e1, "kappa": 1.01, "iters": 20}


def init_scale_zero(W, nbits, group_size, axis, round_zero):
    """Quantizer.quantize's steps 2-6 (hqq 0.2.8.post1), returning the grouped fp32 matrix, s and z."""
    W = W.float()
    if group_size is not None:
        W = W.reshape([-1, group_size]) if axis == 1 else W.reshape([group_size, -1])
    _min = W.min(axis=axis, keepdim=True)[0]
    _max = W.max(axis=axis, keepdim=True)[0]
    max_v = round(2**nbits - 1)
    denom = _max - _min
    scale = max_v / denom
    scale = torch.where(denom.abs() <= 1e-4, torch.full_like(scale, 1.0), scale)
    scale = scale.clamp(max=2e4)
    zero = -_min * scale
    if round_zero:
        zero = torch.round(zero)
    return W, scale, zero, [0, max_v]


def solver(W, scale, zero, min_max, axis, dtype, beta_schedule):
    """optimize_weights_proximal_legacy's loop around hqq's own step, recording each iteration's error.
    dtype float32 = its CPU path, float16 = its CUDA path; beta_schedule = hqq <= 0.2.6."""
    beta = OPT["beta"]
    W_f, s, z = W.to(dtype), scale.to(dtype), zero.to(dtype)
    best = torch.tensor(torch.inf, dtype=torch.float32)
    errors = []
    stopped = False
    for _ in range(OPT["iters"]):
        W_r, W_q, z, s = optimize_weights_proximal_legacy_step(W_f, s, z, min_max, beta, OPT["lp_norm"], axis)
        if beta_schedule:
            beta *= OPT["kappa"]
        err = torch.abs(W_f - W_r).mean().float()
        errors.append(float(err))
        if err < best:
            best = err
        else:
            stopped = True
            break
    W_q = torch.round(W * s + z).clamp_(min_max[0], min_max[1])
    return W_q, s, z, errors, stopped


def quantize_case(W, nbits, group_size, axis, optimize, round_zero, solver_dtype, beta_schedule):
    G, s0, z0, min_max = init_scale_zero(W, nbits, group_size, axis, round_zero)
    packing = Quantizer.bit_to_packing[nbits]
    errors, stopped = [], False
    if optimize:
        dtype = torch.float16 if solver_dtype == "f16" else torch.float32
        W_q, s, z, errors, stopped = solver(G, s0, z0, min_max, axis, dtype, beta_schedule)
    if solver_dtype == "f32" and not beta_schedule:
        # The golden output is hqq's own Quantizer.quantize; our loop above must agree with it.
        packed, meta = Quantizer.quantize(W, nbits=nbits, channel_wise=True, group_size=group_size,
                                          optimize=optimize, round_zero=round_zero, axis=axis, bitpack=True,
                                          device="cpu")
        if optimize:
            assert torch.equal(Quantizer.pack[packing](W_q), packed), "loop replica disagrees with hqq"
            assert torch.equal((1.0 / s), meta["scale"]) and torch.equal(z, meta["zero"])
        return packed, meta["scale"].float(), meta["zero"].float(), packing, errors, stopped
    return Quantizer.pack[packing](W_q), (1.0 / s).float(), z.float(), packing, errors, stopped


def make_vectors():
    tensors, cases = {}, {}
    for (name, shape, kind, seed, dtype, nbits, gs, axis, optimize, rz, solver_dtype, beta_schedule) in CASES:
        W = make_weight(shape, kind, seed, dtype)
        packed, scale, zero, packing, errors, stopped = quantize_case(W, nbits, gs, axis, optimize, rz,
                                                                      solver_dtype, beta_schedule)
        tensors[name + ".W"] = W.contiguous()
        tensors[name + ".W_q"] = packed.contiguous()
        tensors[name + ".scale"] = scale.contiguous()
        tensors[name + ".zero"] = zero.contiguous()
        cases[name] = {
            "shape": list(shape), "input_dtype": str(dtype).replace("torch.", ""), "nbits": nbits,
            "group_size": -1 if gs is None else gs, "axis": axis, "optimize": optimize, "round_zero": rz,
            "solver_dtype": solver_dtype, "beta_schedule": beta_schedule, "packing": packing,
            "objective": errors, "stopped_early": stopped,
        }
    save_file(tensors, os.path.join(OUT, "vectors.safetensors"))
    return cases


# layer name, out, in, bias, nbits, group_size, axis, compute dtype, view_as_float
LAYERS = [
    ("model.layers.0.self_attn.q_proj", 16, 128, False, 4, 64, 1, torch.float16, False),
    ("model.layers.0.mlp.down_proj", 16, 96, True, 3, 32, 0, torch.float16, False),
    ("model.layers.0.mlp.up_proj", 24, 64, False, 2, 16, 1, torch.bfloat16, False),
    ("model.layers.1.self_attn.o_proj", 8, 64, True, 1, 8, 0, torch.float32, False),
    ("model.layers.1.mlp.gate_proj", 8, 128, False, 8, 64, 1, torch.float16, False),
    ("model.layers.1.self_attn.v_proj", 8, 128, False, 4, 64, 1, torch.float16, True),
]


def make_checkpoint():
    state, source, layers = {}, {}, {}
    g = torch.Generator().manual_seed(1234)
    for (name, n, k, has_bias, nbits, gs, axis, cdt, vaf) in LAYERS:
        lin = torch.nn.Linear(k, n, bias=has_bias)
        with torch.no_grad():
            lin.weight.copy_(torch.randn((n, k), generator=g) * 0.05)
            if has_bias:
                lin.bias.copy_(torch.randn((n,), generator=g) * 0.1)
        lin = lin.to(torch.float16)
        source[name + ".weight"] = lin.weight.detach().clone()
        if has_bias:
            source[name + ".bias"] = lin.bias.detach().clone()
        cfg = BaseQuantizeConfig(nbits=nbits, group_size=gs, axis=axis, view_as_float=vaf)
        layer = HQQLinear(lin, cfg, compute_dtype=cdt, device="cpu", del_orig=True)
        source[name + ".dequant"] = layer.dequantize().contiguous()
        for key, value in layer.state_dict().items():
            state[name + "." + key] = value.contiguous()
        layers[name] = {"out_features": n, "in_features": k, "bias": has_bias, "nbits": nbits, "group_size": gs,
                        "axis": axis, "compute_dtype": str(cdt), "view_as_float": vaf,
                        "round_zero": nbits == 4, "keys": sorted(layer.state_dict().keys())}
    save_file(state, os.path.join(OUT, "hqq_linear.safetensors"), metadata={"format": "pt"})
    save_file(source, os.path.join(OUT, "hqq_linear_source.safetensors"))
    try:
        from transformers import HqqConfig
        quantization_config = HqqConfig(nbits=4, group_size=64).to_dict()
        quantization_config["quant_method"] = str(getattr(quantization_config["quant_method"], "value",
                                                          quantization_config["quant_method"]))
    except Exception as e:  # transformers missing: the dict it would write, by hand (spec section 5)
        print("transformers unavailable (%s); writing quantization_config by hand" % e, file=sys.stderr)
        quantization_config = {"quant_config": BaseQuantizeConfig(nbits=4, group_size=64), "quant_method": "hqq",
                               "skip_modules": ["lm_head"]}
    return layers, quantization_config


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)  # summation order of float reductions: one thread, one order
    cases = make_vectors()
    layers, quantization_config = make_checkpoint()
    made_by = {"hqq": hqq.__version__ if hasattr(hqq, "__version__") else "unknown", "torch": torch.__version__,
               "command": "python tests/data/make_hqq_vectors.py"}
    with open(os.path.join(OUT, "vectors.json"), "w") as f:
        json.dump({"made_by": made_by, "solver_defaults": OPT, "cases": cases}, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(OUT, "hqq_linear.json"), "w") as f:
        json.dump({"made_by": made_by, "layers": layers, "quantization_config": quantization_config}, f, indent=1,
                  sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
    print("wrote %s (%d bytes)" % (OUT, total))


if __name__ == "__main__":
    main()
