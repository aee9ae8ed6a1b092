"""Makes the AWQ checkpoints of tests/data/awq_format/ with AutoAWQ's own quantizer and packers, on the CPU.

    python make_awq_vectors.py [--out DIR]

Needs torch, safetensors and autoawq (tested with autoawq 0.2.9 installed with --no-deps beside torch 2.15 and
transformers 5.23; AutoAWQ imports `datasets` at start-up). No GPU: the quantizer and packers used here are
plain torch code.

Each case is a set of linears (random fp16 weights N(0, 0.05^2) whose first rows are all positive or all
negative, so that AutoAWQ's zero-point clamp to [0, 15] happens, plus one constant row) quantized exactly as
AutoAWQ's AwqQuantizer._apply_quant does for export: the fp16 weight goes through
AwqQuantizer.pseudo_quantize_tensor (zero_point, 4-bit, the case's group size), then WQLinear_GEMM.from_linear
(scales and zeros transposed first, as _apply_quant does) or WQLinear_GEMV.from_linear packs it. The
packed buffers (qweight, qzeros, scales, bias) are saved under "<module>.<buffer>" in model.safetensors as
AutoAWQ's save_quantized names them, with the config file the case names:

    gemm_g32         GEMM, group 32,  config.json quantization_config (AutoAWQ's to_transformers_dict)
    gemm_g128_qc     GEMM, group 128, quant_config.json only (older AutoAWQ: q_group_size, w_bit, "GEMM")
    gemv_g64         GEMV, group 64,  config.json quantization_config
    gemv_g32_qc      GEMV, group 32,  quant_config.json only ("GEMV")
    gemv_g128        GEMV, group 128, config.json quantization_config

Shapes are odd multiples of what the packers need and GEMV widths with padding. (The GEMM layout holds any n
that is a multiple of 8, but WQLinear_GEMM.from_linear allocates n // 32 * 4 words per row, so AutoAWQ itself
exports GEMM only for n a multiple of 32; GEMV needs k a multiple of 32, which every supported group size
gives.) expected.safetensors holds every linear's dequantized weight "<module>.weight", f16 [n, k]:
AutoAWQ's own dequantize_gemm (utils/packing_utils.py) of the packed GEMM tensors; for GEMV, which AutoAWQ
unpacks only inside its CUDA kernels, an unpacking written here from the layout (awq.md 4.2). The script
asserts that both equal the pseudo-quantized weight AutoAWQ computed before packing, so the expected values
are AutoAWQ's in every case. tests/io/awq_format_test.cpp requires lowbit to decode the same f16 values.
"""
import argparse
import json
import os
import sys
from types import SimpleNamespace

CASES = {
    # name: (version, group size, config file, [(module, n, k, bias)])
    "gemm_g32": ("gemm", 32, "config.json", [
        ("model.layers.0.self_attn.q_proj", 96, 96, True),
        ("model.layers.0.mlp.down_proj", 160, 160, False),
        ("model.layers.1.mlp.up_proj", 32, 32, False),
    ]),
    "gemm_g128_qc": ("gemm", 128, "quant_config.json", [
        ("model.layers.0.self_attn.o_proj", 32, 384, False),
        ("model.layers.0.mlp.gate_proj", 96, 128, True),
    ]),
    "gemv_g64": ("gemv", 64, "config.json", [
        ("model.layers.0.self_attn.v_proj", 24, 192, True),
        ("model.layers.0.mlp.down_proj", 8, 576, False),
    ]),
    "gemv_g32_qc": ("gemv", 32, "quant_config.json", [
        ("model.layers.0.self_attn.k_proj", 16, 96, False),
        ("model.layers.0.mlp.down_proj", 8, 1056, False),
    ]),
    "gemv_g128": ("gemv", 128, "config.json", [
        ("model.layers.0.mlp.up_proj", 16, 384, False),
    ]),
}


def make_linear(torch, n, k, bias, seed):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        w = torch.randn(n, k, generator=g) * 0.05
        w[0] = w[0].abs() + 0.01        # all positive: zero point -round(min/scale) < 0, clamped to 0
        w[1] = -(w[1].abs() + 0.01)     # all negative: zero point > 15, clamped to 15
        w[2] = 0.03                     # constant: max - min = 0, scale 1e-5 / 15
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.02)
    return lin.half()


def gemv_unpack(torch, qweight, qzeros, scales, group_size):
    """GEMV layout (awq.md 4.2): nibble j of word c of row o is input 8c + j; zeros and scales per group."""
    shifts = torch.arange(0, 32, 4)
    codes = ((qweight[:, :, None] >> shifts) & 15).reshape(qweight.shape[0], -1)          # [n, k]
    k = codes.shape[1]
    groups = k // group_size
    zeros = ((qzeros[:, :, None] >> shifts) & 15).reshape(qzeros.shape[0], -1)[:, :groups]  # [n, G]
    s = scales[:, :groups].float()
    z = zeros.repeat_interleave(group_size, dim=1)
    return ((codes - z).float() * s.repeat_interleave(group_size, dim=1)).half()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = p.parse_args()
    import torch
    from safetensors.torch import save_file
    from awq.modules.linear.gemm import WQLinear_GEMM
    from awq.modules.linear.gemv import WQLinear_GEMV
    from awq.quantize.quantizer import AwqQuantizer
    from awq.models._config import AwqConfig
    from awq.utils.packing_utils import dequantize_gemm

    seed = 0
    for case, (version, group_size, config_file, linears) in CASES.items():
        quantizer = SimpleNamespace(group_size=group_size, w_bit=4, zero_point=True)
        tensors, expected = {}, {}
        for module, n, k, bias in linears:
            seed += 1
            lin = make_linear(torch, n, k, bias, seed)
            # AwqQuantizer._apply_quant, on the CPU.
            w_hat, scales, zeros = AwqQuantizer.pseudo_quantize_tensor(quantizer, lin.weight.data)
            lin.weight.data = w_hat
            if version == "gemm":
                q = WQLinear_GEMM.from_linear(lin, 4, group_size, scales=scales.t().contiguous(),
                                              zeros=zeros.t().contiguous())
                unpacked = dequantize_gemm(q.qweight, q.qzeros, q.scales, 4, group_size).t().contiguous()
            else:
                q = WQLinear_GEMV.from_linear(lin, 4, group_size, scales=scales, zeros=zeros)
                unpacked = gemv_unpack(torch, q.qweight, q.qzeros, q.scales, group_size)
            assert unpacked.dtype == torch.float16 and unpacked.shape == (n, k)
            assert torch.equal(unpacked.view(torch.int16), w_hat.view(torch.int16)), \
                f"{case} {module}: the unpacked weight differs from AutoAWQ's pseudo-quantized one"
            for name in ("qweight", "qzeros", "scales", "bias"):
                t = getattr(q, name)
                if t is not None:
                    tensors[f"{module}.{name}"] = t.contiguous()
            expected[f"{module}.weight"] = unpacked
        target = os.path.join(args.out, case)
        os.makedirs(target, exist_ok=True)
        save_file(tensors, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
        save_file(expected, os.path.join(target, "expected.safetensors"), metadata={"format": "pt"})
        cfg = AwqConfig(zero_point=True, q_group_size=group_size, w_bit=4, version=version)
        if config_file == "config.json":
            doc = {"model_type": "llama", "torch_dtype": "float16",
                   "quantization_config": cfg.to_transformers_dict()}
        else:  # older AutoAWQ: to_dict(), version upper case as those files have it
            doc = cfg.to_dict()
            doc["version"] = version.upper()
        with open(os.path.join(target, config_file), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"{case}: {len(expected)} linears -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
