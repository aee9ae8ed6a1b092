"""bitsandbytes loads the 4-bit layers lowbit writes (io/formats/bnb.hpp) and dequantizes them to exactly
lowbit's values.

    python test_bnb_load.py --file layers.safetensors --expected dequant.safetensors

For every layer P in the file (every "P.weight.quant_state.bitsandbytes__nf4|fp4" key) the state is
rebuilt with bitsandbytes' own QuantState.from_dict, as transformers does for a pre-quantized checkpoint,
and dequantized with bitsandbytes.functional.dequantize_4bit in fp32 (on CUDA when a GPU is present, else
on the CPU); the result must equal `expected`'s tensor P (lowbit's dequantize_nf4_reference) value for
value. tests/io/bnb_format_test.cpp writes both files and runs this script when LOWBIT_PYTHON names a
Python with torch and bitsandbytes (exit 77 = skipped, with the reason printed).

Run by ctest with the CLI's arguments (--lowbit ...), it skips: the CLI does not write bitsandbytes files
yet, so the gtest above drives it instead.
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
    if not args.file:
        print("SKIPPED: the lowbit CLI does not write bitsandbytes 4-bit files yet; "
              "tests/io/bnb_format_test.cpp (BnbFormat.BitsandbytesLoadsOurFiles) runs this check")
        return SKIP
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes' CPU kernels try torch.compile: slow here
    try:
        import torch
        import bitsandbytes.functional as F
        from safetensors.torch import load_file
    except ImportError as e:
        print(f"SKIPPED: torch, bitsandbytes and safetensors are needed ({e})")
        return SKIP

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors = load_file(args.file)
    expected = load_file(args.expected)
    suffixes = ("weight.quant_state.bitsandbytes__nf4", "weight.quant_state.bitsandbytes__fp4")
    layers = sorted(k[: -len(s)] for k in tensors for s in suffixes if k.endswith(s))
    if not layers:
        print(f"FAIL: {args.file} holds no 4-bit layer")
        return 1
    failures = 0
    for prefix in layers:
        state = {k[len(prefix) + 7:]: v for k, v in tensors.items() if k.startswith(prefix + "weight.")}
        weight = tensors[prefix + "weight"].to(device)
        qs = F.QuantState.from_dict(state, device=device)
        qs.dtype = torch.float32  # the kernels compute in fp32 and round once to this dtype
        got = dequantize(F, torch, weight, qs, device).cpu()
        want = expected[prefix.rstrip(".") or "weight"]
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
