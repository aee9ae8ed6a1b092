"""AWQ checkpoints between lowbit and the ecosystem (AutoAWQ, and transformers through GPTQModel), on the CPU.

    python test_awq_format.py --lowbit <cli> --shared-data <dir> --work <dir>

1. lowbit writes, the ecosystem reads: `lowbit quantize --method rtn --format awq` (GEMM, 4-bit g32) and
   `--format awq-gemv` (4-bit g64) quantize a small random Llama (fp16, with attention and MLP biases);
   `lowbit dequantize --dtype f16` writes what lowbit decodes.
   - GEMM: AutoAWQ's own dequantize_gemm of every linear's qweight/qzeros/scales must equal lowbit's f16
     weights bit for bit; AutoAWQ's AwqConfig.from_pretrained must read the config as written; when
     GPTQModel is installed (transformers 5 loads AWQ through it), transformers' AutoModelForCausalLM must
     load the folder on the CPU and its logits must match the dense model lowbit dequantized.
   - GEMV: every linear loads into AutoAWQ's WQLinear_GEMV (its buffers' shapes and dtypes, strict), and an
     unpacking that follows AutoAWQ's GEMV packing code gives lowbit's weights bit for bit (AutoAWQ itself
     unpacks GEMV only inside its CUDA kernels).
2. AutoAWQ writes, lowbit reads: the checkpoints in tests/data/awq_format (made by AutoAWQ's quantizer and
   packers, make_awq_vectors.py) go through `lowbit dequantize`; the weights must equal AutoAWQ's
   dequantize_gemm (GEMM) or the committed expected weights (GEMV), bit for bit.

Needs torch, transformers, safetensors and autoawq (pip install --no-deps autoawq; it imports `datasets`);
exits 77 (skipped) naming what is missing. GPTQModel is optional (part 1's transformers check).
"""
import json
import os
import shutil
import sys
import warnings

from hf_util import bits_equal, compare_logits, make_tiny_llama, run, tensors
from interop_util import SKIP, parse_args, require

args = parse_args()
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
warnings.filterwarnings("ignore")
torch, safetensors_torch, transformers = require("torch", "safetensors.torch", "transformers")
try:
    from awq.models._config import AwqConfig
    from awq.modules.linear.gemv import WQLinear_GEMV
    from awq.utils.packing_utils import dequantize_gemm
except Exception as e:  # ImportError, or AutoAWQ failing on a newer torch/transformers
    print(f"SKIPPED: AutoAWQ is needed (pip install --no-deps autoawq, plus datasets): {e}")
    sys.exit(SKIP)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "awq_format")
SETTINGS = {
    "gemm_g32": ("awq", ["--bits", "4", "--group-size", "32"]),
    "gemv_g64": ("awq-gemv", ["--bits", "4", "--group-size", "64"]),
}






def modules_of(packed):
    return sorted(name[: -len(".qweight")] for name in packed if name.endswith(".qweight"))


def gemv_unpack(qweight, qzeros, scales, group_size):
    """AutoAWQ's WQLinear_GEMV.from_linear packing, undone: nibble j of word c of row o is input 8c + j."""
    shifts = torch.arange(0, 32, 4)
    codes = ((qweight[:, :, None] >> shifts) & 15).reshape(qweight.shape[0], -1)
    groups = codes.shape[1] // group_size
    zeros = ((qzeros[:, :, None] >> shifts) & 15).reshape(qzeros.shape[0], -1)[:, :groups]
    s = scales[:, :groups].float().repeat_interleave(group_size, dim=1)
    return ((codes - zeros.repeat_interleave(group_size, dim=1)).float() * s).half()


def compare(packed, want, version, group_size, label):
    failures = 0
    modules = modules_of(packed)
    for m in modules:
        qweight, qzeros, scales = packed[m + ".qweight"], packed[m + ".qzeros"], packed[m + ".scales"]
        if version == "gemm":
            got = dequantize_gemm(qweight, qzeros, scales, 4, group_size).t().contiguous()
        else:
            n, k = qweight.shape[0], qweight.shape[1] * 8
            layer = WQLinear_GEMV(4, group_size, k, n, m + ".bias" in packed, "cpu")
            state = {"qweight": qweight, "qzeros": qzeros, "scales": scales}
            if m + ".bias" in packed:
                state["bias"] = packed[m + ".bias"]
            for key, value in state.items():
                buf = getattr(layer, key)
                if buf.shape != value.shape or buf.dtype != value.dtype:
                    print(f"FAIL: {label}: {m}.{key} is {tuple(value.shape)} {value.dtype}; AutoAWQ's WQLinear_GEMV "
                          f"expects {tuple(buf.shape)} {buf.dtype}")
                    failures += 1
            layer.load_state_dict(state, strict=True)
            got = gemv_unpack(layer.qweight, layer.qzeros, layer.scales, group_size)
        ref = want.get(m + ".weight")
        if ref is None or not bits_equal(got, ref):
            diff = "missing" if ref is None else f"max |diff| {(got.float() - ref.float()).abs().max().item()}"
            print(f"FAIL: {label}: {m}: AutoAWQ's weight differs from lowbit's ({diff})")
            failures += 1
    if not modules:
        print(f"FAIL: {label}: no AWQ linear")
        return 1
    if failures == 0:
        print(f"ok: {label}: {len(modules)} {version.upper()} linears decode as lowbit decodes them")
    return failures



def compare_transformers(folder, dense_folder, label):
    try:
        import gptqmodel  # noqa: F401  transformers 5 loads AWQ through it
    except Exception as e:
        print(f"skipped: {label}: transformers loads AWQ through GPTQModel, which is not installed ({e})")
        return 0
    return compare_logits(folder, dense_folder, label, lambda m: "awq" in type(m).__name__.lower(), "AWQ",
                          ["quant_config.json"])


def main():
    work = os.path.join(args.work, "awq_format")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source = os.path.join(work, "source")
    make_tiny_llama(source, seed=3)
    failures = 0
    for label, (fmt, flags) in SETTINGS.items():
        out = os.path.join(work, label)
        deq = out + "_dense"
        run([args.lowbit, "quantize", "--method", "rtn", "--format", fmt, *flags, source, out])
        run([args.lowbit, "dequantize", "--dtype", "f16", out, deq])
        cfg = AwqConfig.from_pretrained(out)
        group_size = int(flags[flags.index("--group-size") + 1])
        if (cfg.version, cfg.w_bit, cfg.q_group_size, cfg.zero_point) != (fmt == "awq" and "gemm" or "gemv", 4,
                                                                           group_size, True):
            print(f"FAIL: lowbit {label}: AutoAWQ reads the config as {cfg}")
            failures += 1
        packed, dense = tensors(out), tensors(deq)
        failures += compare(packed, dense, cfg.version, group_size, f"lowbit {label}")
        for name, t in packed.items():  # biases and every dense tensor pass through unchanged
            if not name.endswith((".qweight", ".qzeros", ".scales")) and not torch.equal(t, dense[name]):
                print(f"FAIL: lowbit {label}: {name} changed")
                failures += 1
        if fmt == "awq":
            failures += compare_transformers(out, deq, f"lowbit {label}")
    for case in sorted(os.listdir(DATA)):
        folder = os.path.join(DATA, case)
        if not os.path.isdir(folder):
            continue
        copy = os.path.join(work, "autoawq_" + case)  # without expected.safetensors (it would read as a shard)
        os.makedirs(copy)
        for name in os.listdir(folder):
            if name != "expected.safetensors":
                shutil.copyfile(os.path.join(folder, name), os.path.join(copy, name))
        deq = copy + "_dense"
        run([args.lowbit, "dequantize", "--dtype", "f16", copy, deq])
        packed = tensors(copy)
        qc_path = os.path.join(copy, "quant_config.json")
        if os.path.exists(qc_path):
            with open(qc_path) as f:
                cfg = AwqConfig.from_dict(json.load(f))
        else:
            cfg = AwqConfig.from_pretrained(copy)
        want = tensors(deq)
        if cfg.version == "gemv":  # AutoAWQ unpacks GEMV only on the GPU: its pre-packing weights instead
            expected = safetensors_torch.load_file(os.path.join(folder, "expected.safetensors"))
            for name, t in expected.items():
                if not bits_equal(t, want.get(name, torch.empty(0))):
                    print(f"FAIL: AutoAWQ's {case}: {name} differs from AutoAWQ's weight")
                    failures += 1
        failures += compare(packed, want, cfg.version, cfg.q_group_size, f"AutoAWQ's {case}")
    print(f"{'FAILED' if failures else 'passed'}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
