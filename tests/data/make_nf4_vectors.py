"""Golden vectors for lowbit's NF4/FP4 quantizer (quant/nf4.hpp) and bitsandbytes 4-bit checkpoints
(io/formats/bnb.hpp), made by bitsandbytes itself.

    python tests/data/make_nf4_vectors.py --device cuda     # the normative CUDA kernels (needs a GPU)
    python tests/data/make_nf4_vectors.py --device cpu      # bitsandbytes' CPU backend, small cases only
    python tests/data/make_nf4_vectors.py --model           # a tiny 4-bit Llama via transformers (GPU)

Writes into tests/data/nf4/:
    inputs.safetensors         the fixed input tensors (numpy, fixed seeds; identical on every run)
    vectors_<device>.safetensors + .json
                               per case "<case>.codes" (u8, bnb's packed bytes), "<case>.absmax" (f32, or
                               u8 when double quantized), "<case>.nested_absmax", "<case>.nested_offset",
                               "<case>.absmax_hat" (the rebuilt f32 absmax), "dynamic_map" (the nested map
                               this torch builds); CUDA only: "<case>.dequant" (f32, small cases) and
                               "nested_ties.*" (quantize_blockwise on every midpoint of that map); the .json
                               lists the cases and the versions that made them
    tiny_llama_dense.safetensors  (--model) the 7 linear weights of a random 1-layer Llama (bf16), and
    tiny_llama_nf4/            the whole model loaded with BitsAndBytesConfig(load_in_4bit, nf4, double
                               quant) and saved by save_pretrained: config.json + model.safetensors

Requires torch, numpy, safetensors and bitsandbytes (>= 0.48 for CPU 4-bit), transformers for --model.
"""
import argparse
import json
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nf4")

# Thresholds as the CUDA kernels write them (kernels.cu dQuantizeNF4 / dQuantizeFP4), decimal literals
# taken to fp32: an independent source from the bit patterns in quant/nf4.hpp.
NF4_THRESHOLDS = ["-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
                  "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
                  "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
                  "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]
FP4_THRESHOLDS = ["0.00260417", "0.0859375", "0.20833333", "0.29166667", "0.4166667", "0.583333", "0.8333333"]


def f32(s):
    return np.float32(float(s))


def around(t):
    """t, the next fp32 above and the next below."""
    return [t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))]


def make_inputs():
    inputs = {}
    inputs["vector_a"] = np.array([0.5, -1.0, 0.25, 0.0, 2.0, -0.1, 1.5, -2.0], dtype=np.float32)

    v = [np.float32(1.0)]
    for t in NF4_THRESHOLDS:
        v += around(f32(t))
    v += [0.0, -0.0, -1.0, 0.5, -0.5, 0.25, -0.25, 0.75, 0.999, -0.999, 1e-30, -1e-30, 0.0397, -0.0455, 0.12, 0.2,
          0.3, -0.7]
    inputs["ties_nf4"] = np.array(v[:64], dtype=np.float32)

    v = [np.float32(1.0)]
    for t in FP4_THRESHOLDS:
        v += around(f32(t)) + [-x for x in around(f32(t))]
    v += [0.0, -0.0, -1.0, 1e-30, -1e-30, 0.0026, -0.0026, 0.1, -0.1, 0.4, -0.4, 0.6, -0.6, 0.9, -0.9, 0.03,
          -0.03, 0.22, -0.22, 0.45, -0.45]
    inputs["ties_fp4"] = np.array(v[:64], dtype=np.float32)

    # fp32 subnormals: the CUDA build flushes them (--use_fast_math implies -ftz=true); block 1 is all
    # subnormal.
    sub = [1.0, 1e-40, -1e-40, 3e-39, -3e-39, 1.1e-38, -1.1e-38, 1e-45, -1e-45] + [0.25, -0.5] * 27 + [0.125]
    sub2 = [(-1) ** i * (i + 1) * 1e-41 for i in range(64)]
    inputs["subnormal"] = np.array(sub + sub2, dtype=np.float32)

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((7, 37)) * 0.02).astype(np.float32)
    w.reshape(-1)[64:128] = 0.0  # an all-zero block at block size 64 (two at 32)
    inputs["odd_f32"] = w

    rng = np.random.default_rng(2)
    w = rng.standard_normal((33, 100)) * 0.05
    w.reshape(-1)[rng.integers(0, w.size, 10)] *= 8.0
    w.reshape(-1)[640:704] = 0.0
    inputs["f16"] = w.astype(np.float16)

    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 72)) * np.exp(rng.standard_normal((40, 72)) * 0.5) * 0.03
    inputs["bf16"] = w.astype(np.float32)  # stored as bf16 below (numpy has no bf16)

    rng = np.random.default_rng(4)
    w = rng.standard_normal((97, 101)) * 0.02 * rng.uniform(0.5, 2.0, (97, 1))
    w.reshape(-1)[3200:3264] = 0.0  # block 50 at block size 64, blocks 100 and 101 at 32
    inputs["dq_f16"] = w.astype(np.float16)

    rng = np.random.default_rng(5)
    inputs["sizes_f32"] = rng.standard_normal(1537).astype(np.float32)  # one short block from 2048 on

    rng = np.random.default_rng(6)
    w = rng.uniform(-0.9, 0.9, 512).astype(np.float32)
    w[::64] = np.where(rng.integers(0, 2, 8) == 1, 1.0, -1.0)  # every block's absmax is exactly 1
    inputs["const_absmax"] = w
    return inputs


# (input, quant_type, blocksize, double_quant)
CASES = (
    [("vector_a", t, 64, False) for t in ("nf4", "fp4")]
    + [(i, t, 64, False) for i in ("ties_nf4", "ties_fp4", "subnormal") for t in ("nf4", "fp4")]
    + [("odd_f32", t, b, False) for t in ("nf4", "fp4") for b in (32, 64, 128)]
    + [("odd_f32", "nf4", 64, True), ("odd_f32", "fp4", 32, True)]
    + [("f16", t, 64, dq) for t in ("nf4", "fp4") for dq in (False, True)] + [("f16", "nf4", 256, False)]
    + [("bf16", t, 128, dq) for t in ("nf4", "fp4") for dq in (False, True)] + [("bf16", "nf4", 32, False)]
    + [("dq_f16", "nf4", 64, False), ("dq_f16", "nf4", 64, True), ("dq_f16", "fp4", 64, True),
       ("dq_f16", "nf4", 32, True)]
    + [("sizes_f32", "nf4", b, False) for b in (32, 64, 128, 256, 512, 1024, 2048, 4096)]
    + [("sizes_f32", "fp4", 1024, False), ("sizes_f32", "fp4", 4096, False), ("sizes_f32", "nf4", 4096, True),
       ("sizes_f32", "fp4", 512, True)]
    + [("const_absmax", t, 64, True) for t in ("nf4", "fp4")]
)


SMALL = 600  # inputs up to this many elements also store the dequantized output (and are the CPU set)


def case_name(inp, qt, b, dq):
    return f"{inp}.{qt}.b{b}" + (".dq" if dq else "")


def torch_input(torch, name, a):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(torch.bfloat16) if name == "bf16" else t


def vectors(device):
    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from safetensors.torch import save_file

    inputs = make_inputs()
    os.makedirs(OUT, exist_ok=True)
    save_file({k: torch_input(torch, k, v) for k, v in inputs.items()}, os.path.join(OUT, "inputs.safetensors"))

    out = {}
    listing = []
    for inp, qt, b, dq in CASES:
        if device == "cpu" and inputs[inp].size > SMALL:
            continue  # the CPU backend's differences show on the small cases; keep the files small
        name = case_name(inp, qt, b, dq)
        x = torch_input(torch, inp, inputs[inp]).to(device)
        codes, qs = F.quantize_4bit(x, blocksize=b, compress_statistics=dq, quant_type=qt)
        assert codes.dtype == torch.uint8 and codes.shape[1] == 1, codes.shape
        out[name + ".codes"] = codes.reshape(-1).cpu()
        out[name + ".absmax"] = qs.absmax.cpu().contiguous()
        if dq:
            out[name + ".nested_absmax"] = qs.state2.absmax.cpu().contiguous()
            out[name + ".nested_offset"] = qs.offset.reshape(1).float().cpu()
            ahat = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
            out[name + ".absmax_hat"] = ahat.float().cpu().contiguous()
            if "dynamic_map" not in out:
                out["dynamic_map"] = qs.state2.code.float().cpu().contiguous()
        has_dequant = x.numel() <= SMALL and device == "cuda"
        if has_dequant:
            qs.dtype = torch.float32  # the kernels compute in fp32 and round once to this dtype
            out[name + ".dequant"] = F.dequantize_4bit(codes, qs).reshape(-1).cpu()
        listing.append({"case": name, "input": inp, "quant_type": qt, "blocksize": b, "double_quant": dq,
                        "dequant": has_dequant})

    # The 8-bit nested quantizer on every fp32 midpoint of the map (and 1.0 so that the absmax is 1).
    code = F.create_dynamic_map().to(device)
    if device == "cpu":  # its C++ 65536-bin table only approximates the nearest entry: not worth keeping
        code = None
    if code is not None:
        mids = ((code[:-1] + code[1:]) * 0.5).float()
        ties = torch.cat([torch.ones(1, device=device), mids])
        q8, _ = F.quantize_blockwise(ties, code=code, blocksize=256)
        out["nested_ties.input"] = ties.cpu()
        out["nested_ties.codes"] = q8.cpu()
        out["nested_ties.map"] = code.cpu()

    meta = {"device": device, "torch": torch.__version__, "bitsandbytes": bnb.__version__,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else "", "cases": listing}
    save_file(out, os.path.join(OUT, f"vectors_{device}.safetensors"))
    with open(os.path.join(OUT, f"vectors_{device}.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {len(listing)} cases to {OUT}/vectors_{device}.*")


LINEARS = [f"model.layers.0.{m}.weight" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def save_linears(dense_dir, path):
    """The dense weights of the seven linear layers (all the tests need of the dense model)."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(os.path.join(dense_dir, "model.safetensors"))
    save_file({k: tensors[k] for k in LINEARS}, path, metadata={"format": "pt"})


def tiny_model():
    """A 1-layer Llama with k = 96 and 32 (not multiples of 64: blocks span rows), quantized by transformers."""
    import tempfile

    import torch
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as dense:
        model.save_pretrained(dense, safe_serialization=True)
        save_linears(dense, os.path.join(OUT, "tiny_llama_dense.safetensors"))
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
        q = LlamaForCausalLM.from_pretrained(dense, quantization_config=qcfg, device_map="cuda",
                                             dtype=torch.bfloat16)
    out = os.path.join(OUT, "tiny_llama_nf4")
    q.save_pretrained(out, safe_serialization=True)
    for f in os.listdir(out):  # keep only what the tests read
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(out, f))
    print("wrote tiny_llama_dense.safetensors and tiny_llama_nf4/")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--model", action="store_true")
    args = p.parse_args()
    if not args.device and not args.model:
        p.error("give --device and/or --model")
    if args.device:
        vectors(args.device)
    if args.model:
        tiny_model()


if __name__ == "__main__":
    sys.exit(main())
