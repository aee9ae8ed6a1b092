"""GPTQ checkpoints between lowbit and the ecosystem (GPTQModel, and transformers through it), on the CPU.

    python test_gptq_format.py --lowbit <cli> --shared-data <dir> --work <dir>

1. lowbit writes, the ecosystem reads: `lowbit quantize --method rtn --format gptq` quantizes a small
   random Llama (with attention and MLP biases, fp16) at 4-bit g32 sym (v1), 3-bit g32 asym (gptq_v2),
   2-bit g64 asym (gptq_v2) and 8-bit per-channel sym (v1); `lowbit dequantize --dtype f16` writes what
   lowbit decodes. GPTQModel.load(backend=TORCH) must load each folder and its TorchLinear.dequantize_weight()
   must equal lowbit's f16 weights bit for bit (biases too); transformers' AutoModelForCausalLM (which loads
   GPTQ through optimum/GPTQModel) must load the 4-bit and 3-bit folders, and its logits must match the
   dense model lowbit dequantized (to fp16 matmul rounding).
2. The ecosystem writes, lowbit reads: every checkpoint GPTQModel made in tests/data/gptq_format (v1 sym
   with act-order, v1 asym with zero points of 0, gptq_v2) is loaded by the installed GPTQModel and by
   `lowbit dequantize`; the weights must be equal bit for bit.

Needs torch, transformers, safetensors and gptqmodel (pip install gptqmodel optimum; it runs on the CPU);
exits 77 (skipped) naming what is missing.
"""
import os
import shutil
import sys

from hf_util import bits_equal, compare_logits, make_tiny_llama, run, tensors
from interop_util import SKIP, parse_args, require

args = parse_args()
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # GPTQModel's CPU thread pool needs two workers
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
torch, safetensors_torch, transformers = require("torch", "safetensors.torch", "transformers")
try:
    import gptqmodel  # noqa: F401
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
except Exception as e:  # ImportError, or a broken install
    print(f"SKIPPED: GPTQModel is needed (pip install gptqmodel optimum): {e}")
    sys.exit(SKIP)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "gptq_format")
SETTINGS = {
    "b4_g32_sym": ["--bits", "4", "--group-size", "32", "--sym"],
    "b3_g32_asym": ["--bits", "3", "--group-size", "32", "--asym"],
    "b2_g64_asym": ["--bits", "2", "--group-size", "64", "--asym"],
    "b8_gm1_sym": ["--bits", "8", "--group-size", "-1", "--sym"],
}
TRANSFORMERS_CHECK = ("b4_g32_sym", "b3_g32_asym")






def compare_gptqmodel(folder, want, label):
    """GPTQModel's own unpacking of `folder` against lowbit's f16 weights; returns the failure count."""
    model = GPTQModel.load(folder, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    failures = checked = 0
    for name, module in model.model.named_modules():
        if not isinstance(module, BaseQuantLinear):
            continue
        module.eval()
        got = module.dequantize_weight().t().contiguous().to(torch.float16)
        ref = want.get(name + ".weight")
        checked += 1
        if ref is None or not bits_equal(got, ref):
            diff = "missing" if ref is None else f"max |diff| {(got.float() - ref.float()).abs().max().item()}"
            print(f"FAIL: {label}: {name}: GPTQModel's weight differs from lowbit's ({diff})")
            failures += 1
        bias = getattr(module, "bias", None)
        if bias is not None and name + ".bias" in want and not torch.equal(bias.to(torch.float16), want[name + ".bias"]):
            print(f"FAIL: {label}: {name}.bias differs")
            failures += 1
    if checked == 0:
        print(f"FAIL: {label}: GPTQModel loaded no quantized linear")
        return 1
    if failures == 0:
        print(f"ok: {label}: GPTQModel {gptqmodel.__version__} decodes {checked} linears exactly as lowbit")
    return failures



def compare_transformers(folder, dense_folder, label):
    """transformers loads the GPTQ folder; its logits match the dense model lowbit dequantized."""
    return compare_logits(folder, dense_folder, label, lambda m: isinstance(m, BaseQuantLinear), "GPTQ",
                          ["quantize_config.json"])


def main():
    work = os.path.join(args.work, "gptq_format")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source = os.path.join(work, "source")
    make_tiny_llama(source, seed=4)
    failures = 0
    for label, flags in SETTINGS.items():
        out = os.path.join(work, label)
        deq = out + "_dense"
        run([args.lowbit, "quantize", "--method", "rtn", "--format", "gptq", *flags, source, out])
        run([args.lowbit, "dequantize", "--dtype", "f16", out, deq])
        failures += compare_gptqmodel(out, tensors(deq), f"lowbit {label}")
        if label in TRANSFORMERS_CHECK:
            failures += compare_transformers(out, deq, f"lowbit {label}")
    for case in sorted(os.listdir(DATA)):
        folder = os.path.join(DATA, case)
        if not os.path.isfile(os.path.join(folder, "quantize_config.json")):
            continue
        # A copy without expected.safetensors (it would read as a second shard), with a tokenizer.
        copy = os.path.join(work, "gptqmodel_" + case)
        os.makedirs(copy)
        for name in ("model.safetensors", "config.json", "quantize_config.json"):
            shutil.copyfile(os.path.join(folder, name), os.path.join(copy, name))
        for name in ("tokenizer.json", "tokenizer_config.json"):  # GPTQModel.load wants a tokenizer
            shutil.copyfile(os.path.join(source, name), os.path.join(copy, name))
        deq = copy + "_dense"
        run([args.lowbit, "dequantize", "--dtype", "f16", copy, deq])
        failures += compare_gptqmodel(copy, tensors(deq), f"GPTQModel's {case}")
    print(f"{'FAILED' if failures else 'passed'}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
