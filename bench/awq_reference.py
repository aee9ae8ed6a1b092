#!/usr/bin/env python3
"""Times llm-awq's AWQ search on one Llama decoder block (torch, fp32, CPU) on the blocks and calibration inputs
bench/awq_bench.cpp quantizes, and prints its output error and chosen alphas beside lowbit's.

    LOWBIT_NUM_THREADS=2 LOWBIT_AWQ_BENCH_DUMP=/tmp/awq-bench build/bin/lowbit_bench --benchmark_filter=AwqLayer \
        --benchmark_repetitions=3
    /tmp/venv-ref/bin/python bench/awq_reference.py --data /tmp/awq-bench --threads 2      (needs torch, safetensors)

The first command writes awq_<block>.safetensors (the layer's seven weights, two norm weights and its inputs
x [samples, T, hidden]; heads and RoPE constants in the metadata) and awq_<block>.lowbit.jsonl (lowbit's times,
alphas and errors) per block.

What runs (written from the behaviour of mit-han-lab/llm-awq d6e797a4, awq/quantize/{auto_scale,auto_clip,
quantizer}.py and pre_quant.py run_awq, as shared/methods/awq.md sections 2.2-2.10 describe it; defaults w_bit 4,
q_group_size 128 (32 for stories15M, whose 288 columns 128 does not divide), zero_point, n_grid 20, max_shrink 0.5, n_sample_token 512):
  1. capture: the block runs once on the whole batch [samples, T, hidden]; the inputs of q (= k, v), o, gate
     (= up) and down are kept;
  2. auto_scale for the four Llama groups on the original weights: (input_layernorm -> q, k, v; inspect the
     attention block), (v -> o; only if v and o have the same shape), (post_attention_layernorm -> gate, up;
     inspect the MLP), (up -> down); per alpha = i / 20, i = 0..19: s = x_mean^alpha, clamp(min 1e-4),
     s / sqrt(max s * min s); W <- Q(W diag(s)) / s for the group's linears; loss = mean (y_ref - y)^2 (fp32);
     the first strict minimum wins; weights restored after each candidate;
  3. apply_scale: norm weights / s, the previous linear's last rows / s, the scaled linears' columns * s, the
     cached inputs / s;
  4. auto_clip on every linear but q and k: shrink factors 1 - i/20, i = 0..9, per (row, group), error over
     every (T // 512)-th token, output channels in batches of 256 (if they divide n, else 64), computed as the
     reference does, by broadcasting x [1, tokens, groups, 128] * w [rows, 1, groups, 128] and summing;
     apply_clip clamps each group to [-max_val, max_val];
  5. pseudo_quantize_tensor of all seven linears (zero point, group 128).
The block forward is transformers' LlamaDecoderLayer in fp32 (RMSNorm, rotate-half RoPE, SDPA causal attention,
SiLU MLP), written here with torch.nn.functional.

Deviations from llm-awq, none of which changes a result: batch of output channels may end with a partial one
(llm-awq asserts n % 64 == 0, which stories15M's 288 rows fail); one cached copy per distinct input (llm-awq
keeps one per linear, divides each once); a scale candidate builds new weight tensors and the originals are put
back afterwards (llm-awq copies the inspected module's state dict to the CPU and reloads it, which on a CPU-only
run would alias the weights it then scales in place). Precision: fp32 everywhere (the model dtype here; llm-awq runs the
model's fp16 on a GPU); lowbit rounds the grid's scale to f16 (the checkpoint's), this script does not.

--clip matmul computes the clip search's per-group dot products with a batched matrix product instead of the
broadcast (same numbers up to float summation order): a faster torch formulation than llm-awq's, shown so that
the comparison does not rest only on the reference's memory-bound clip search.
"""
import argparse
import glob
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

N_GRID = 20
MAX_SHRINK = 0.5
N_SAMPLE_TOKEN = 512
W_BIT = 4
GROUP = 128
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


F16_SCALE = False  # --f16-scale: round the grid's scale to fp16 as lowbit does (a diagnostic, not llm-awq)


def pseudo_quantize(w, group, n_bit=W_BIT):
    """Zero-point group quantization and dequantization (llm-awq pseudo_quantize_tensor, zero_point=True)."""
    shape = w.shape
    g = w.reshape(-1, group)
    hi = g.amax(dim=1, keepdim=True)
    lo = g.amin(dim=1, keepdim=True)
    top = 2 ** n_bit - 1
    scale = (hi - lo).clamp(min=1e-5) / top
    if F16_SCALE:
        scale = scale.half().float()
    zero = (-torch.round(lo / scale)).clamp(0, top)
    q = (torch.clamp(torch.round(g / scale) + zero, 0, top) - zero) * scale
    return q.reshape(shape)


class Block:
    """One Llama decoder layer in fp32: weights W[name] [n, k], norms, RoPE tables for T positions."""

    def __init__(self, tensors, meta, tokens):
        self.W = {n: tensors[n].float().contiguous() for n in LINEARS}
        self.ln1 = tensors["input_layernorm"].float().clone()
        self.ln2 = tensors["post_attention_layernorm"].float().clone()
        self.heads = int(meta["heads"])
        self.kv_heads = int(meta["kv_heads"])
        self.eps = float(meta["rms_norm_eps"])
        self.group = int(meta.get("group_size", GROUP))
        hidden = self.W["q_proj"].shape[1]
        self.head_dim = self.W["q_proj"].shape[0] // self.heads
        d = self.head_dim
        inv_freq = 1.0 / (float(meta["rope_theta"]) ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        angles = torch.outer(torch.arange(tokens, dtype=torch.float32), inv_freq)
        emb = torch.cat((angles, angles), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        assert hidden == self.ln1.numel()

    def rms_norm(self, h, weight):
        var = h.pow(2).mean(-1, keepdim=True)
        return weight * (h * torch.rsqrt(var + self.eps))

    def rope(self, x):
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * self.cos + rotated * self.sin

    def attention(self, x, hook=None):
        b, t, _ = x.shape
        d = self.head_dim
        q = F.linear(x, self.W["q_proj"]).view(b, t, self.heads, d).transpose(1, 2)
        k = F.linear(x, self.W["k_proj"]).view(b, t, self.kv_heads, d).transpose(1, 2)
        v = F.linear(x, self.W["v_proj"]).view(b, t, self.kv_heads, d).transpose(1, 2)
        q, k = self.rope(q), self.rope(k)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(b, t, self.heads * d)
        if hook is not None:
            hook("o_proj", a)
        return F.linear(a, self.W["o_proj"])

    def mlp(self, x, hook=None):
        inner = F.silu(F.linear(x, self.W["gate_proj"])) * F.linear(x, self.W["up_proj"])
        if hook is not None:
            hook("down_proj", inner)
        return F.linear(inner, self.W["down_proj"])

    def forward(self, h, hook=None):
        x = self.rms_norm(h, self.ln1)
        if hook is not None:
            hook("q_proj", x)
        h = h + self.attention(x, hook)
        x = self.rms_norm(h, self.ln2)
        if hook is not None:
            hook("gate_proj", x)
        return h + self.mlp(x, hook)


# The Llama scaling groups: (previous op, scaled linears, cached input, inspected module).
GROUPS = [("input_layernorm", ["q_proj", "k_proj", "v_proj"], "q_proj", "attention"),
          ("v_proj", ["o_proj"], "o_proj", "o_proj"),
          ("post_attention_layernorm", ["gate_proj", "up_proj"], "gate_proj", "mlp"),
          ("up_proj", ["down_proj"], "down_proj", "down_proj")]
INPUT_OF = {"q_proj": "q_proj", "k_proj": "q_proj", "v_proj": "q_proj", "o_proj": "o_proj",
            "gate_proj": "gate_proj", "up_proj": "gate_proj", "down_proj": "down_proj"}


def inspect(block, module, x):
    if module == "attention":
        return block.attention(x)
    if module == "mlp":
        return block.mlp(x)
    return F.linear(x, block.W[module])


def search_scale(block, linears, x, module):
    """auto_scale's grid search for one group: returns (s, alpha, losses)."""
    y_ref = inspect(block, module, x)
    x_mean = x.abs().view(-1, x.shape[-1]).mean(0)
    best, best_alpha, best_s, losses = float("inf"), -1.0, None, []
    original = {n: block.W[n] for n in linears}
    for i in range(N_GRID):
        alpha = i / N_GRID
        s = x_mean.pow(alpha).clamp(min=1e-4).view(-1)
        s = s / (s.max() * s.min()).sqrt()
        for n in linears:
            block.W[n] = pseudo_quantize(original[n] * s.view(1, -1), block.group) / s.view(1, -1)
        y = inspect(block, module, x)
        loss = (y_ref - y).float().pow(2).mean().item()
        losses.append(loss)
        if loss < best:
            best, best_alpha, best_s = loss, alpha, s.clone()
        for n in linears:  # restore
            block.W[n] = original[n]
    if best_s is None:
        raise RuntimeError("no scale candidate gave a finite loss")
    return best_s, best_alpha, losses


def search_clip(w, x, group, formulation):
    """auto_clip_layer: the clamp bound per (row, group), [n, groups, 1]."""
    n, k = w.shape
    x = x.reshape(-1, x.shape[-1])
    x = x.reshape(1, x.shape[0], -1, group)
    x = x[:, 0::max(1, x.shape[1] // N_SAMPLE_TOKEN)]
    w = w.reshape(n, 1, -1, group)
    batch = 256 if n % 256 == 0 else 64
    xb = x[0].transpose(0, 1).contiguous() if formulation == "matmul" else None  # [groups, tokens, 128]
    out = []
    for r0 in range(0, n, batch):
        wb = w[r0:r0 + batch]
        m0 = wb.abs().amax(dim=-1, keepdim=True)  # [rows, 1, groups, 1]
        best_m = m0.clone()
        min_err = torch.ones_like(m0) * 1e9

        def dots(weights):  # [rows, tokens, groups]
            if formulation == "matmul":
                return torch.bmm(xb, weights[:, 0].permute(1, 2, 0)).permute(2, 1, 0)
            return (x * weights).sum(dim=-1)

        y0 = dots(wb)
        for i in range(int(MAX_SHRINK * N_GRID)):
            m = m0 * (1 - i / N_GRID)
            q = pseudo_quantize(torch.clamp(wb, -m, m), group)
            err = (dots(q) - y0).pow(2).mean(dim=1).view(min_err.shape)
            better = err < min_err
            min_err[better] = err[better]
            best_m[better] = m[better]
        out.append(best_m)
    return torch.cat(out, dim=0).squeeze(1)


def awq_block(block, h, clip_formulation):
    """Steps 1-5 on `block` in place; returns (alphas, losses per group, seconds per phase)."""
    times = {}
    t0 = time.perf_counter()
    feats = {}
    with torch.no_grad():
        block.forward(h, hook=lambda name, x: feats.__setitem__(name, x.clone()))
    times["capture"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    found = []
    for prev, linears, inp, module in GROUPS:
        if prev == "v_proj" and block.W["v_proj"].shape != block.W["o_proj"].shape:
            found.append(None)
            continue
        found.append(search_scale(block, linears, feats[inp], module))
    times["scale search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for (prev, linears, inp, _), f in zip(GROUPS, found):
        if f is None:
            continue
        s = f[0]
        if prev == "input_layernorm":
            block.ln1 = block.ln1 / s
        elif prev == "post_attention_layernorm":
            block.ln2 = block.ln2 / s
        else:
            w = block.W[prev].clone()
            w[-s.numel():] = w[-s.numel():] / s.view(-1, 1)
            block.W[prev] = w
        for n in linears:
            block.W[n] = block.W[n] * s.view(1, -1)
        feats[inp] = feats[inp] / s.view(1, 1, -1)
    times["apply scales"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    clips = {}
    for n in LINEARS:
        if n in ("q_proj", "k_proj"):
            continue
        clips[n] = search_clip(block.W[n], feats[INPUT_OF[n]], block.group, clip_formulation)
    for n, max_val in clips.items():
        w = block.W[n]
        g = w.reshape(w.shape[0], -1, block.group)
        block.W[n] = torch.clamp(g, -max_val, max_val).reshape(w.shape)
    times["clip search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for n in LINEARS:
        block.W[n] = pseudo_quantize(block.W[n], block.group)
    times["quantize"] = time.perf_counter() - t0
    alphas = [f[1] if f is not None else -1.0 for f in found]
    losses = [min(f[2]) if f is not None else 0.0 for f in found]
    return alphas, losses, times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with the C++ bench's awq_<block>.safetensors")
    parser.add_argument("--repeats", type=int, default=3, help="runs per block; the median time is printed")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LOWBIT_NUM_THREADS", "2")))
    parser.add_argument("--clip", choices=["broadcast", "matmul"], default="broadcast",
                        help="broadcast: llm-awq's formulation of the clip search (default); matmul: a faster one")
    parser.add_argument("--block", action="append", help="only these blocks (stories15M, synthetic1024)")
    parser.add_argument("--f16-scale", action="store_true",
                        help="round the grid's scale to fp16 as lowbit does (to tell that difference from others)")
    args = parser.parse_args()
    global F16_SCALE
    F16_SCALE = args.f16_scale
    from safetensors import safe_open
    torch.set_num_threads(args.threads)
    print("torch %s, %d threads, clip search: %s%s" % (torch.__version__, torch.get_num_threads(), args.clip,
                                                      ", fp16 grid scales" if F16_SCALE else ""))
    for path in sorted(glob.glob(os.path.join(args.data, "awq_*.safetensors"))):
        name = os.path.basename(path)[len("awq_"):-len(".safetensors")]
        if args.block and name not in args.block:
            continue
        with safe_open(path, "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        h = tensors["x"].float()
        original = Block(tensors, meta, h.shape[1])
        with torch.no_grad():
            y_fp = original.forward(h)
            if "y" in tensors:  # lowbit's forward of the same layer: the two block forwards must agree
                diff = ((y_fp - tensors["y"]).norm() / tensors["y"].norm()).item()
                print("%s: forward vs lowbit's, relative error %.2e" % (name, diff))
                assert diff < 1e-4, "the torch block forward does not match lowbit's"
            quantized_rtn = Block(tensors, meta, h.shape[1])
            for n in LINEARS:
                quantized_rtn.W[n] = pseudo_quantize(quantized_rtn.W[n], quantized_rtn.group)
            mse_rtn = (quantized_rtn.forward(h) - y_fp).pow(2).mean().item()
            del quantized_rtn
            walls, cpus, phases = [], [], []
            for _ in range(args.repeats):
                block = Block(tensors, meta, h.shape[1])
                t0, c0 = time.perf_counter(), time.process_time()
                alphas, losses, times = awq_block(block, h, args.clip)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
                phases.append(times)
            mse = (block.forward(h) - y_fp).pow(2).mean().item()
        print("%s: x %s, group %d, weights %s" % (name, list(h.shape), original.group,
                                          ", ".join("%s %dx%d" % (n, *original.W[n].shape) for n in LINEARS)))
        print("reference: %s s wall (median %.2f s); process CPU %s s (median %.2f s)" % (
            ", ".join("%.2f" % w for w in walls), statistics.median(walls), ", ".join("%.2f" % c for c in cpus),
            statistics.median(cpus)))
        print("  phases (median s): " + ", ".join("%s %.2f" % (k, statistics.median(p[k] for p in phases))
                                                for k in phases[0]))
        print("  mse %.6g  (RTN %.6g)  alphas %s  group losses %s" % (
            mse, mse_rtn, " ".join("%.2f" % a for a in alphas), " ".join("%.6g" % l for l in losses)))
        ours = os.path.join(args.data, "awq_%s.lowbit.jsonl" % name)
        if os.path.exists(ours):
            lines = [json.loads(line) for line in open(ours) if line.strip()]
            same = [line for line in lines if line["threads"] == args.threads] or lines
            secs = [s for line in same for s in line["seconds"]]
            cpu = [s for line in same for s in line.get("cpu_seconds", [])]
            last = same[-1]
            med = statistics.median(secs)
            print("lowbit:    %s s wall (median %.2f s); process CPU %s s (median %.2f s); %d threads" % (
                ", ".join("%.2f" % s for s in secs), med, ", ".join("%.2f" % c for c in cpu),
                statistics.median(cpu) if cpu else math.nan, last["threads"]))
            print("  mse %.6g  (RTN %.6g)  alphas %s  group losses %s" % (
                last["mse"], last["mse_rtn"], " ".join("%.2f" % a for a in last["alpha"]),
                " ".join("%.6g" % l for l in last["loss"])))
            print("speed-up (reference / lowbit, medians): wall %.2fx, process CPU %.2fx;  mse lowbit / reference: "
                  "%.3f" % (statistics.median(walls) / med,
                            statistics.median(cpus) / statistics.median(cpu) if cpu else math.nan,
                            last["mse"] / mse if mse > 0 else math.nan))


if __name__ == "__main__":
    main()
