"""Shared by the checkpoint-format interoperability tests that need torch and transformers: running the
lowbit CLI, a tiny random Llama folder, reading a folder's tensors, and transformers' logits check.
Import it after interop_util.require() has checked the packages (it imports torch at use)."""
import json
import os
import subprocess
import sys


def run(cmd):
    """Runs a command; on failure prints it with its output and exits 1 (the test fails)."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
        sys.exit(1)
    return r.stdout


def make_tiny_llama(folder, seed):
    """A small random fp16 Llama with attention and MLP biases and a word-level tokenizer, saved to `folder`.
    Two rows of every projection are all-positive, so asymmetric quantizers meet zero points of 0."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0.0, 0.05)
                p[:2] = p[:2].abs()
            elif name.endswith("proj.bias"):
                p.normal_(0.0, 0.02)
    model.to(torch.float16).save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(1, 96)}
    vocab["<unk>"] = 0
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", bos_token="t1",
                            eos_token="t2").save_pretrained(folder)


def tensors(folder):
    """{name: tensor} of every .safetensors file of a folder (one file or shards)."""
    import safetensors.torch

    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(safetensors.torch.load_file(os.path.join(folder, name)))
    return out


def bits_equal(a, b):
    """Same shape, dtype and 16-bit patterns (fp16/bf16 tensors)."""
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


def strip_quantization(folder, side_files):
    """`lowbit dequantize` copies the side files as they are; the dense copy must not claim to be quantized."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.pop("quantization_config", None)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    for side in side_files:
        if os.path.exists(os.path.join(folder, side)):
            os.remove(os.path.join(folder, side))


def compare_logits(folder, dense_folder, label, is_quantized, what, side_files):
    """transformers loads the quantized `folder` on the CPU (it must hold some module with is_quantized(m))
    and its logits must match, within 2% of their largest magnitude, those of the dense model lowbit
    dequantized into `dense_folder`. Returns the failure count (0 or 1)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    strip_quantization(dense_folder, side_files)
    q = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float16).eval()
    d = AutoModelForCausalLM.from_pretrained(dense_folder, device_map="cpu", dtype=torch.float32).eval()
    kinds = sorted({type(m).__name__ for m in q.modules() if is_quantized(m)})
    if not kinds:
        print(f"FAIL: {label}: transformers loaded no {what} linear")
        return 1
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = q(ids).logits.float()
        want = d(ids).logits.float()
    err = ((got - want).abs().max() / want.abs().max()).item()
    if not err < 2e-2:
        print(f"FAIL: {label}: transformers' logits differ from lowbit's dense model by {err:.3g} (relative)")
        return 1
    print(f"ok: {label}: transformers {transformers.__version__} loads it ({', '.join(kinds)}); logits within "
          f"{err:.2g} of lowbit's dequantized model")
    return 0
