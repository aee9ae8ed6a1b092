"""bitsandbytes loads the 4-bit layers lowbit writes (io/formats/bnb.hpp) and dequantizes them to exactly
lowbit's values.

    python test_bnb_load.py --file layers.safetensors --expected dequant.safetensors

For every layer P in the file (every "P.weight.quant_state.bitsandbytes__nf4|fp4" key) the state is
rebuilt with bitsandbytes' own QuantState.from_dict, as transformers does for a pre-quantized checkpoint,
and dequantized with bitsandbytes.functional.dequantize_4bit in fp32 (on CUDA when a GPU is present, else
on the CPU); the result must equal `expected`'s tensor P (lowbit's dequantize_nf4_reference) value for
value. tests/io/bnb_format_test.cpp writes both files and runs this script when LOWBIT_PYTHON names a
Python with torch and bitsandbytes (exit 77 = skipped, with the reason printed).

Run by ctest with the CLI's arguments (--lowbit ... --work DIR), it goes end to end instead: `lowbit quantize
--format bitsandbytes` writes NF4+DQ and FP4 checkpoints of a model (stories15M where ../shared/data is
present, else a small random one written here), `lowbit dequantize` writes what lowbit decodes, and every
layer bitsandbytes rebuilds from the checkpoint must equal it.
"""
import argparse
import os
import sys

SKIP = 77


def dequantize(F, torch, weight, qs, device):
    """bitsandbytes.functional.dequantize_4bit, except where its CPU kernel is known to be wrong.

    bitsandbytes <= 0.50.2 on an x86 CPU with AVX-512 dequantizes with a per-row absmax index that is only
    right when the last dimension is a multiple of the block size (csrc/cpu_ops.cpp,
    dequantizeBlockwise4bitCpu; its ARM path has the guard). There the PyTorch reference kernel of the
    default backend gives bitsandbytes' answer instead."""
    if device == "cpu" and qs.shape[-1] % qs.blocksize != 0:
        try:
            from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
            from bitsandbytes.backends.utils import _get_4bit_code
        except ImportError:
            return F.dequantize_4bit(weight, qs)
        absmax = qs.absmax
        if qs.nested:
            absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
        return _dequantize_4bit_compute(weight.view(torch.uint8).reshape(-1), absmax.float(),
                                        _get_4bit_code(qs.quant_type, device), qs.blocksize, qs.shape, qs.dtype)
    return F.dequantize_4bit(weight, qs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--file")
    p.add_argument("--expected")
    p.add_argument("--lowbit")
    p.add_argument("--shared-data")
    p.add_argument("--work")
    args = p.parse_args()
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes' CPU kernels try torch.compile: slow here
    try:
        import torch
        import bitsandbytes.functional as F
        from safetensors.torch import load_file
    except ImportError as e:
        print(f"SKIPPED: torch, bitsandbytes and safetensors are needed ({e})")
        return SKIP

    if args.file:
        return check(torch, F, load_file(args.file), load_file(args.expected), args.file)
    if not args.lowbit or not args.work:
        print("SKIPPED: give --file and --expected, or --lowbit and --work")
        return SKIP
    return end_to_end(torch, F, load_file, args)


def end_to_end(torch, F, load_file, args):
    """lowbit quantize --format bitsandbytes, then bitsandbytes decodes what lowbit dequantize says."""
    import subprocess
    from safetensors.torch import save_file
    os.makedirs(args.work, exist_ok=True)
    model = os.path.join(args.shared_data or "", "stories15M")
    if not os.path.isdir(model):
        model = os.path.join(args.work, "bnb_source")
        os.makedirs(model, exist_ok=True)
        g = torch.Generator().manual_seed(7)
        save_file({"layers.0.q_proj.weight": torch.randn(96, 288, generator=g) * 0.02,
                   "layers.0.down_proj.weight": torch.randn(288, 80, generator=g),
                   "norm.weight": torch.ones(288)}, os.path.join(model, "model.safetensors"))
    failures = 0
    for method in (["nf4", "--double-quant"], ["fp4"]):
        out = os.path.join(args.work, "bnb_" + method[0])
        dense = out + "_dense"
        for cmd in ([args.lowbit, "quantize", "--method", *method, "--format", "bitsandbytes", model, out],
                    [args.lowbit, "dequantize", "--dtype", "f32", out, dense]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL: {' '.join(cmd)}: {r.stderr}")
                return 1
        failures += check(torch, F, load_file(os.path.join(out, "model.safetensors")),
                          load_file(os.path.join(dense, "model.safetensors")), out)
    return 1 if failures else 0


def check(torch, F, tensors, expected, source):
    """Every 4-bit layer of `tensors`, decoded by bitsandbytes, equals expected[layer weight name]."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    suffixes = ("weight.quant_state.bitsandbytes__nf4", "weight.quant_state.bitsandbytes__fp4")
    layers = sorted(k[: -len(s)] for k in tensors for s in suffixes if k.endswith(s))
    if not layers:
        print(f"FAIL: {source} holds no 4-bit layer")
        return 1
    failures = 0
    for prefix in layers:
        state = {k[len(prefix) + 7:]: v for k, v in tensors.items() if k.startswith(prefix + "weight.")}
        weight = tensors[prefix + "weight"].to(device)
        qs = F.QuantState.from_dict(state, device=device)
        qs.dtype = torch.float32  # the kernels compute in fp32 and round once to this dtype
        got = dequantize(F, torch, weight, qs, device).cpu()
        want = expected.get(prefix + "weight", expected.get(prefix.rstrip(".") or "weight"))
        if want is None:
            print(f"FAIL: {prefix}: no expected tensor")
            failures += 1
            continue
        if got.shape != want.shape or not torch.equal(got, want):
            bad = (got.reshape(-1) != want.reshape(-1)).nonzero()[:5].reshape(-1).tolist() if got.numel() == want.numel() else []
            print(f"FAIL: {prefix}: shape {tuple(got.shape)} vs {tuple(want.shape)}; first differences at {bad}")
            failures += 1
        else:
            print(f"ok: {prefix}: {qs.quant_type} blocksize {qs.blocksize} nested {qs.nested} {tuple(got.shape)} "
                  f"{str(weight.dtype)[6:]} storage on {device}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
