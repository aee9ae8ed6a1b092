"""Makes the GPTQ checkpoints of tests/data/gptq_format/ with GPTQModel itself, on the CPU.

    python make_gptq_vectors.py [--out DIR]

Needs torch, transformers and gptqmodel (tested with gptqmodel 7.7.0, transformers 5.23.0, torch 2.15;
GPTQModel needs GPTQMODEL_CPU_WORKERS >= 2 on a machine with two cores, which this script sets).

A tiny Llama (vocab 64, hidden 64, intermediate 128, one layer; fp16, seed 0) whose linears have a few
all-positive rows (so that asymmetric groups get zero point 0, the case where v1 writers differ) is
quantized by GPTQModel.quantize() on random token ids and saved by GPTQModel's own writer in five
settings, one folder each:

    b4_g32_sym_act   4 bit, group 32, sym,  desc_act (act-order g_idx), checkpoint_format gptq
    b3_g32_asym      3 bit, group 32, asym, checkpoint_format gptq (GPTQModel's per-field v1 zeros)
    b2_g64_asym_v2   2 bit, group 64, asym, desc_act, checkpoint_format gptq_v2
    b8_gm1_sym       8 bit, group -1 (per output channel), sym, checkpoint_format gptq
    b4_g64_asym      4 bit, group 64, asym, checkpoint_format gptq (GPTQModel's word-level v1 zeros:
                     a zero point of 0 borrows from the next field)

Each folder keeps model.safetensors, config.json and quantize_config.json as GPTQModel wrote them (the
temporary offload path in meta is blanked), and expected.safetensors: every quantized linear "P" as
"P.weight", f16 [n, k], made by loading the saved folder back with GPTQModel.load(backend=TORCH, f16) and
calling its TorchLinear.dequantize_weight(), i.e. GPTQModel's own unpacking and v1 -> v2 zero conversion.
tests/io/gptq_format_test.cpp requires lowbit's reader to give the same f16 values, bit for bit.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

CASES = {
    "b4_g32_sym_act": dict(bits=4, group_size=32, sym=True, desc_act=True, format="gptq"),
    "b3_g32_asym": dict(bits=3, group_size=32, sym=False, desc_act=False, format="gptq"),
    "b2_g64_asym_v2": dict(bits=2, group_size=64, sym=False, desc_act=True, format="gptq_v2"),
    "b8_gm1_sym": dict(bits=8, group_size=-1, sym=True, desc_act=False, format="gptq"),
    "b4_g64_asym": dict(bits=4, group_size=64, sym=False, desc_act=False, format="gptq"),
}


def make_source(folder, torch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).to(torch.float16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0.0, 0.05)
                p[:3] = p[:3].abs()  # all-positive rows: asymmetric zero point 0
    model.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(1, 64)}
    vocab["<unk>"] = 0
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", bos_token="t1",
                            eos_token="t2").save_pretrained(folder)


def quantize(source, target, setting, torch):
    from gptqmodel import GPTQModel, QuantizeConfig

    qc = QuantizeConfig(bits=setting["bits"], group_size=setting["group_size"], sym=setting["sym"],
                        desc_act=setting["desc_act"], format=setting["format"],
                        act_group_aware=False)  # GAR is a solver option; it also refuses group_size -1
    model = GPTQModel.load(source, qc, device="cpu")
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 64, (1, 32), generator=g),
             "attention_mask": torch.ones(1, 32, dtype=torch.long)} for _ in range(16)]
    model.quantize(data, batch_size=1)
    model.save(target)


def blank_offload_path(path):
    with open(path) as f:
        text = f.read()
    doc = json.loads(text)
    qc = doc.get("quantization_config", doc)
    if not isinstance(qc.get("meta"), dict) or not qc["meta"].get("offload_to_disk_path"):
        return
    qc["meta"]["offload_to_disk_path"] = ""
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def expected_weights(folder, torch):
    """GPTQModel's own unpacking of the saved checkpoint: {module.weight: f16 [n, k]}."""
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    model = GPTQModel.load(folder, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    out = {}
    for name, module in model.model.named_modules():
        if isinstance(module, BaseQuantLinear):
            module.eval()
            w = module.dequantize_weight()  # [k, n]
            out[name + ".weight"] = w.t().contiguous().to(torch.float16)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = p.parse_args()
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    import torch
    from safetensors.torch import save_file

    work = tempfile.mkdtemp(prefix="gptq-vectors-")
    try:
        source = os.path.join(work, "source")
        make_source(source, torch)
        for case, setting in CASES.items():
            saved = os.path.join(work, case)
            quantize(source, saved, setting, torch)
            target = os.path.join(args.out, case)
            os.makedirs(target, exist_ok=True)
            for name in ("model.safetensors", "config.json", "quantize_config.json"):
                shutil.copyfile(os.path.join(saved, name), os.path.join(target, name))
                if name.endswith(".json"):
                    blank_offload_path(os.path.join(target, name))
            expected = expected_weights(saved, torch)
            assert expected, f"{case}: GPTQModel loaded no quantized linear"
            save_file(expected, os.path.join(target, "expected.safetensors"), metadata={"format": "pt"})
            print(f"{case}: {len(expected)} linears -> {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
