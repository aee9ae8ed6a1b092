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
import subprocess
import sys
import warnings

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


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
        sys.exit(1)
    return r.stdout


def make_source(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(4)
    cfg = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0.0, 0.05)
                p[:2] = p[:2].abs()  # all-positive rows: zero points of 0
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
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(safetensors_torch.load_file(os.path.join(folder, name)))
    return out


def bits_equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


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


def strip_quantization(folder):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.pop("quantization_config", None)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    for side in ("quant_config.json",):
        if os.path.exists(os.path.join(folder, side)):
            os.remove(os.path.join(folder, side))


def compare_transformers(folder, dense_folder, label):
    try:
        import gptqmodel  # noqa: F401  transformers 5 loads AWQ through it
    except Exception as e:
        print(f"skipped: {label}: transformers loads AWQ through GPTQModel, which is not installed ({e})")
        return 0
    from transformers import AutoModelForCausalLM

    strip_quantization(dense_folder)
    q = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float16).eval()
    d = AutoModelForCausalLM.from_pretrained(dense_folder, device_map="cpu", dtype=torch.float32).eval()
    kinds = sorted({type(m).__name__ for m in q.modules() if "awq" in type(m).__name__.lower()})
    if not kinds:
        print(f"FAIL: {label}: transformers loaded no AWQ linear")
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


def main():
    work = os.path.join(args.work, "awq_format")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source = os.path.join(work, "source")
    make_source(source)
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
