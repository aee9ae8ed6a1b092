#!/usr/bin/env python3
"""Writes the bitsandbytes blockwise 8-bit golden vectors that tests/quant/bnb8_test.cpp reads.

Every code, absmax and dequantized value in the output comes from the bitsandbytes package itself
(`bitsandbytes.functional.quantize_blockwise` / `dequantize_blockwise`), run on the backend named by
--backend:

    cuda     the CUDA kernel kQuantizeBlockwise: the normative rule (int8.md section 4.1). The committed
             files were made this way (see "backend" in bnb8_vectors.json).
    default  bnb's PyTorch backend (bucketize against midpoints, ties to the LOWER code), run on the CPU.
    cpu      bnb's C++ CPU backend (a 65536-bin lookup table, only approximately nearest).

For every case the JSON also counts how many codes the two CPU backends give differently from the
backend that made the file, so the differences between bnb's own backends are on record.

The signed dynamic map is the normative table of int8.md section 4.3 (torch 1.13's create_dynamic_map()),
installed into bnb's map cache so that both levels of nested quantization use it: current torch builds a
map that differs from it in 42 entries by one ulp. The linear map is whatever create_linear_map() gives
under the running torch; each linear case stores the map it used as `<case>.quant_map`.

    pip install bitsandbytes torch numpy safetensors
    python3 tests/data/make_bnb8_vectors.py --backend cuda        # writes tests/data/bnb8/

Inputs are fixed by a seed; the outputs depend only on the backend (and for the linear map on torch's
linspace).
"""
import argparse
import json
import os
import platform

import numpy as np
import torch
from safetensors.torch import save_file

import bitsandbytes
import bitsandbytes.functional as F

SEED = 20260811

# int8.md section 4.3: the signed dynamic map, fp32 bit patterns, index order.
DYNAMIC_MAP_HEX = """
bf7e3333 bf7a9999 bf770000 bf736666 bf6fcccc bf6c3333 bf68999a bf650000
bf616666 bf5dcccc bf5a3333 bf569999 bf530000 bf4f6666 bf4bcccc bf483333
bf44999a bf410000 bf3d6667 bf39cccd bf363334 bf32999a bf2f0000 bf2b6667
bf27cccd bf243333 bf20999a bf1d0000 bf196666 bf15cccd bf123334 bf0e999a
bf0b0000 bf076666 bf03cccd bf003333 bef93334 bef20000 beeacccc bee3999a
bedc6666 bed53332 bece0000 bec6cccc bebf999a beb86666 beb13332 beaa0000
bea2cccc be9b999a be946666 be8d3334 be860000 be7d999a be6f3334 be60cccd
be526666 be440000 be359999 be273333 be18cccd be0a6666 bdf80000 bddb3334
bdc9eb85 bdc428f5 bdbe6667 bdb8a3d7 bdb2e148 bdad1eb8 bda75c28 bda1999a
bd9bd70a bd96147b bd9051eb bd8a8f5d bd84cccd bd7e147a bd728f5d bd670a3d
bd5b851f bd500000 bd447ae1 bd38f5c3 bd2d70a3 bd21eb85 bd166667 bd0ae147
bcfeb852 bce7ae13 bcd0a3d7 bcb9999a bca28f5c bc8b851f bc68f5c3 bc3ae148
bc1f3b64 bc160418 bc0ccccd bc039581 bbf4bc6a bbe24dd3 bbcfdf3b bbbd70a4
bbab020d bb989374 bb8624dd bb676c8a bb428f5c bb1db22d baf1a9fc baa7ef9d
ba7765ff ba59e83e ba3c6a80 ba1eecc1 ba016f01 b9c7e283 b98ce705 b923d70b
b8ba1f4b b88aefb3 b8378034 b7b24206 b70205ff b65a1a94 b513a3b7 00000000
3513a3b7 365a1a94 370205ff 37b24206 38378034 388aefb3 38ba1f4b 3923d70b
398ce705 39c7e283 3a016f01 3a1eecc1 3a3c6a80 3a59e83e 3a7765ff 3aa7ef9d
3af1a9fc 3b1db22d 3b428f5c 3b676c8a 3b8624dd 3b989374 3bab020d 3bbd70a4
3bcfdf3b 3be24dd3 3bf4bc6a 3c039581 3c0ccccd 3c160418 3c1f3b64 3c3ae148
3c68f5c3 3c8b851f 3ca28f5c 3cb9999a 3cd0a3d7 3ce7ae13 3cfeb852 3d0ae147
3d166667 3d21eb85 3d2d70a3 3d38f5c3 3d447ae1 3d500000 3d5b851f 3d670a3d
3d728f5d 3d7e147a 3d84cccd 3d8a8f5d 3d9051eb 3d96147b 3d9bd70a 3da1999a
3da75c28 3dad1eb8 3db2e148 3db8a3d7 3dbe6667 3dc428f5 3dc9eb85 3ddb3334
3df80000 3e0a6666 3e18cccd 3e273333 3e359999 3e440000 3e526666 3e60cccd
3e6f3334 3e7d999a 3e860000 3e8d3334 3e946666 3e9b999a 3ea2cccc 3eaa0000
3eb13332 3eb86666 3ebf999a 3ec6cccc 3ece0000 3ed53332 3edc6666 3ee3999a
3eeacccc 3ef20000 3ef93334 3f003333 3f03cccd 3f076666 3f0b0000 3f0e999a
3f123334 3f15cccd 3f196666 3f1d0000 3f20999a 3f243333 3f27cccd 3f2b6667
3f2f0000 3f32999a 3f363334 3f39cccd 3f3d6667 3f410000 3f44999a 3f483333
3f4bcccc 3f4f6666 3f530000 3f569999 3f5a3333 3f5dcccc 3f616666 3f650000
3f68999a 3f6c3333 3f6fcccc 3f736666 3f770000 3f7a9999 3f7e3333 3f800000
"""


def dynamic_map():
    bits = np.array([int(h, 16) for h in DYNAMIC_MAP_HEX.split()], dtype=np.uint32)
    assert bits.size == 256
    return torch.from_numpy(bits.view(np.float32).copy())


TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(rng):
    """[(name, dtype, tensor f32 values before the cast, blocksize, map name, nested)]"""
    cases = []

    def normal(shape, scale=0.02, outliers=0.002):
        w = rng.standard_normal(shape).astype(np.float32) * scale
        mask = rng.random(shape) < outliers  # a few large values, as real weights have
        w[mask] *= 40.0
        return w

    # int8.md vector 4: one short block of 8 values.
    cases.append(("spec_vector4", "f32", np.array([0.5, -1.0, 0.25, 0.0, 2.0, -0.1, 1.5, -2.0], np.float32),
                  64, "dynamic", False))
    # Every midpoint of the dynamic map and the float just above it, with absmax 1 (y = w exactly): the
    # CUDA rule sends an exact midpoint to the EVEN code of its two neighbours.
    m = dynamic_map().numpy()
    mids = ((m[:-1] + m[1:]) * np.float32(0.5)).astype(np.float32)
    above = np.nextafter(mids, np.float32(np.inf)).astype(np.float32)
    below = np.nextafter(mids, np.float32(-np.inf)).astype(np.float32)
    cases.append(("ties", "f32", np.concatenate([[np.float32(1.0)], mids, above, below]).astype(np.float32),
                  1024, "dynamic", False))
    # Random weights: blocks run across row ends, the last block is short.
    cases.append(("random_f16_b64", "f16", normal((33, 70)), 64, "dynamic", False))
    cases.append(("random_f32_b256", "f32", normal((17, 100), scale=1.0), 256, "dynamic", False))
    cases.append(("random_bf16_b128", "bf16", normal((8, 300)), 128, "dynamic", False))
    # Power-of-two absmax in every block: 1/absmax is exact on every backend (CUDA uses a fast reciprocal).
    w = normal((16, 96))
    flat = w.reshape(-1)
    for b in range(0, flat.size, 128):
        block = flat[b:b + 128]
        e = np.ceil(np.log2(np.abs(block).max()))
        block[np.argmax(np.abs(block))] = np.float32(2.0 ** e) * (1 if rng.random() < 0.5 else -1)
    cases.append(("pow2_f16_b128", "f16", w, 128, "dynamic", False))
    # The linear map.
    cases.append(("linear_f32_b64", "f32", normal((16, 64), scale=1.0), 64, "linear", False))
    # An all-zero block between two ordinary ones.
    w = normal((4, 64), scale=1.0)
    w[1, :] = 0.0
    cases.append(("zero_block_f32_b64", "f32", w, 64, "dynamic", False))
    # The default block size, a short last block.
    cases.append(("default_f16_b4096", "f16", normal((2, 4500)), 4096, "dynamic", False))
    # Nested absmax: 80 blocks of 64 -> two nested blocks of 64 absmax values.
    cases.append(("nested_f16_b64", "f16", normal((80, 64)), 64, "dynamic", True))
    cases.append(("nested_f32_b256", "f32", normal((12, 100), scale=1.0), 256, "dynamic", True))
    return cases


def backend_ops(backend):
    """(quantize, dequantize) ops of one bnb backend: the ops functional.py calls, dispatched to it."""
    q_op = torch.ops.bitsandbytes.quantize_blockwise.default
    d_op = torch.ops.bitsandbytes.dequantize_blockwise.default
    if backend == "default":
        keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
        return (lambda a, code, blocksize: q_op.redispatch(keys, a, code, blocksize),
                lambda q, absmax, code, blocksize, dtype: d_op.redispatch(keys, q, absmax, code, blocksize, dtype))
    return q_op, d_op


def quantize_by_hand(ops, a, code, blocksize, nested):
    """functional.quantize_blockwise + dequantize_blockwise, step by step, on one backend's ops."""
    quantize, dequantize = ops
    codes, absmax = quantize(a, code, blocksize)
    out = {"codes": codes, "absmax": absmax}
    if nested:
        offset = absmax.mean()
        q_absmax, nested_absmax = quantize(absmax - offset, dynamic_map().to(a.device), blocksize)
        out.update(absmax=q_absmax, nested_absmax=nested_absmax, nested_offset=offset.reshape(1))
        absmax = dequantize(q_absmax, nested_absmax, dynamic_map().to(a.device), blocksize, torch.float32) + offset
    out["dequant"] = dequantize(codes, absmax, code, blocksize, a.dtype)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["cuda", "default", "cpu"], default="cuda")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bnb8"))
    args = parser.parse_args()
    device = "cuda" if args.backend == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make_bnb8_vectors: --backend cuda needs a CUDA device; use --backend default")

    # Both the outer quantization (code=None) and the nested one use bnb's cached "dynamic" map.
    F.name2qmap["dynamic"] = dynamic_map().to(device)
    linear = F.create_linear_map().float()
    maps = {"dynamic": dynamic_map(), "linear": linear}

    rng = np.random.default_rng(SEED)
    tensors = {}
    meta_cases = []
    for name, dtype, values, blocksize, map_name, nested in make_inputs(rng):
        a_cpu = torch.from_numpy(values).to(TORCH_DTYPES[dtype])
        a = a_cpu.to(device)
        code = maps[map_name].to(device)
        got = quantize_by_hand(backend_ops(args.backend), a, code, blocksize, nested)
        if args.backend != "default":
            # The package's own entry points must give the same: the step-by-step form is only there so
            # that the PyTorch backend, which functional.py never picks on a CPU tensor, can be run too.
            q, state = F.quantize_blockwise(a, code=code, blocksize=blocksize, nested=nested)
            assert torch.equal(q, got["codes"]) and torch.equal(state.absmax, got["absmax"])
            assert torch.equal(F.dequantize_blockwise(q, state), got["dequant"])
            if nested:
                assert torch.equal(state.state2.absmax, got["nested_absmax"])
                assert torch.equal(state.offset.reshape(1), got["nested_offset"])
        tensors[f"{name}.input"] = a_cpu.contiguous()
        for key, t in got.items():
            tensors[f"{name}.{key}"] = t.cpu().contiguous()
        if map_name != "dynamic":
            tensors[f"{name}.quant_map"] = maps[map_name].contiguous()
        entry = {"name": name, "dtype": dtype, "shape": list(values.shape), "blocksize": blocksize,
                 "map": map_name, "nested": nested}
        # How bnb's other backends differ from this one on the same input (codes only).
        for other in ("default", "cpu"):
            if other == args.backend:
                continue
            try:
                oq = backend_ops(other)[0](a_cpu, maps[map_name], blocksize)[0]
            except Exception as e:  # e.g. the CPU library is not loaded beside the CUDA one
                entry[f"codes_differing_from_{other}_backend"] = f"not run: {type(e).__name__}: {e}"[:200]
                continue
            diff = (oq.to(torch.int16) - got["codes"].cpu().to(torch.int16)).abs()
            entry[f"codes_differing_from_{other}_backend"] = int((diff != 0).sum())
            entry[f"max_code_difference_from_{other}_backend"] = int(diff.max())
        meta_cases.append(entry)

    runtime_dynamic = F.create_dynamic_map().float().cpu()
    meta = {
        "generator": "tests/data/make_bnb8_vectors.py",
        "seed": SEED,
        "backend": args.backend,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "bitsandbytes": bitsandbytes.__version__,
        "torch": torch.__version__,
        "dynamic_map": "int8.md section 4.3 (torch 1.13 create_dynamic_map), installed into bnb's cache",
        "runtime_dynamic_map_entries_differing_from_table": int(
            (runtime_dynamic.view(torch.int32) != dynamic_map().view(torch.int32)).sum()),
        "cases": meta_cases,
    }
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "bnb8_vectors.safetensors"),
              metadata={"backend": args.backend, "bitsandbytes": bitsandbytes.__version__})
    with open(os.path.join(args.out, "bnb8_vectors.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
