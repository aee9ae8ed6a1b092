#!/usr/bin/env python3
"""GPTQ reference layers for tests/quant/gptq_test.cpp, and the reference solver bench/gptq_reference.py times.

The solver below is the algorithm of IST-DASLab/gptq (gptq.py GPTQ.fasterquant with quant.py's Quantizer,
commit 2d65066e) as /work/shared/methods/gptq.md sections 2.2 and 2.3 describe it, written out here in torch,
fp32, on the CPU: dead columns, damping, chol -> cholesky_inverse -> chol(upper), blocks of 128 columns with
lazy updates, group parameters refreshed from the OUTER W (without the current block's updates), act-order
with dynamic or static groups, the MSE grid search. It also returns what AutoGPTQ writes to a checkpoint
(codes, per-group scales and zeros in processing order, g_idx), which the reference itself does not.

    git clone https://github.com/IST-DASLab/gptq /tmp/gptq-ref        (optional: the cross-check below)
    pip install torch numpy safetensors
    python3 tests/data/gptq/make_gptq_reference.py [--gptq-repo /tmp/gptq-ref]

With --gptq-repo (a checkout of IST-DASLab/gptq), every case is also run through that repository's own
GPTQ.fasterquant on an nn.Linear, and its quantized weight must equal ours bit for bit.

Writes tests/data/gptq/:
  gptq_reference.safetensors  per layer "<layer>.W" (f16 [n, k]) and "<layer>.H" (f16 [k, k]; the solver and the
                              C++ test both use these values widened to fp32); per case "<case>.codes" (u8 [n, k],
                              original column order), "<case>.scales" (f32 [n, groups]), "<case>.zeros" (u8),
                              "<case>.g_idx" (i32 [k])
  gptq_reference.json         layers and cases: settings, the reference's error (sum of Losses), the proxy
                              loss tr((W - Q) H (W - Q)^T) of its fp32 Q (in fp64), and the same for
                              round-to-nearest on the same grid
Inputs are fixed by seeds; rerunning reproduces the files (torch 2.x, CPU).
"""
import argparse
import json
import os
import sys

import torch

OUT = os.path.dirname(os.path.abspath(__file__))


# ---- the quantizer (quant.py Quantizer, perchannel=True, weight=True) ----------------------------------------

def quantize(x, scale, zero, maxq):
    """scale * (clamp(round(x / scale) + zero, 0, maxq) - zero); round is half to even."""
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def codes_of(x, scale, zero, maxq):
    return torch.clamp(torch.round(x / scale) + zero, 0, maxq)


class Quantizer:
    """One (scale, zero) per row of the matrix given to find_params, all fp32."""

    def __init__(self, bits, sym, mse=False, norm=2.4, grid=100, maxshrink=0.8):
        self.maxq = torch.tensor(2 ** bits - 1)
        self.sym = sym
        self.mse = mse
        self.norm = norm
        self.grid = grid
        self.maxshrink = maxshrink
        self.scale = None
        self.zero = None

    def copy(self):
        q = Quantizer.__new__(Quantizer)
        q.__dict__.update(self.__dict__)
        return q

    def find_params(self, x):
        zeros = torch.zeros(x.shape[0])
        xmin = torch.minimum(x.min(1)[0], zeros)
        xmax = torch.maximum(x.max(1)[0], zeros)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            neg = xmin < 0
            xmin[neg] = -xmax[neg]
        both_zero = (xmin == 0) & (xmax == 0)
        xmin[both_zero] = -1
        xmax[both_zero] = +1
        scale = (xmax - xmin) / self.maxq
        if self.sym:
            zero = torch.full_like(scale, (self.maxq + 1) / 2)
        else:
            zero = torch.round(-xmin / scale)
        if self.mse:
            best = torch.full([x.shape[0]], float("inf"))
            for i in range(int(self.maxshrink * self.grid)):
                p = 1 - i / self.grid
                xmin1 = p * xmin
                xmax1 = p * xmax
                scale1 = (xmax1 - xmin1) / self.maxq
                zero1 = torch.round(-xmin1 / scale1) if not self.sym else zero
                err = (quantize(x, scale1.unsqueeze(1), zero1.unsqueeze(1), self.maxq) - x).abs().pow(self.norm).sum(1)
                better = err < best
                best[better] = err[better]
                scale[better] = scale1[better]
                zero[better] = zero1[better]
        self.scale = scale.reshape(-1, 1)
        self.zero = zero.reshape(-1, 1)


# ---- fasterquant ------------------------------------------------------------------------------------------------

def fasterquant(W, H, bits, sym, groupsize=-1, actorder=False, static_groups=False, blocksize=128, percdamp=0.01,
                mse=False):
    """W: [n, k], H: [k, k] (both converted to fp32 copies). Returns a dict: Q (fp32 [n, k], the quantized
    weight in the original column order), codes (u8), scales/zeros ([n, groups], processing order of groups),
    g_idx (i32 [k]), losses (fp32 [n, k], the reference's Losses), error (their sum), perm (or None)."""
    W = W.clone().float()
    H = H.clone().float()
    n, k = W.shape
    quantizer = Quantizer(bits, sym, mse=mse)
    quantizer.find_params(W)  # the per-row grid (groupsize -1), from W before the dead columns are zeroed

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    groups = []
    if static_groups:
        for i in range(0, k, groupsize):
            g = quantizer.copy()
            g.find_params(W[:, i:i + groupsize])
            groups.append(g)

    perm = None
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)

    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    C = torch.zeros_like(W)  # codes, processing order
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(k)
    H[idx, idx] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)

    scale_list, zero_list = [], []
    if groupsize == -1:
        scale_list.append(quantizer.scale)
        zero_list.append(quantizer.zero)
    elif static_groups:
        scale_list = [g.scale for g in groups]
        zero_list = [g.zero for g in groups]

    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)])  # the OUTER W
                        scale_list.append(quantizer.scale)
                        zero_list.append(quantizer.zero)
                else:
                    c = i1 + i
                    if actorder:
                        c = int(perm[c])
                    quantizer = groups[c // groupsize]
            q = quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
            C[:, i1 + i] = codes_of(w.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    g = groupsize if groupsize != -1 else k
    if static_groups and actorder:
        g_idx = torch.tensor([int(perm[j]) // g for j in range(k)], dtype=torch.int32)
    else:
        g_idx = torch.tensor([j // g for j in range(k)], dtype=torch.int32)
    if actorder:
        Q = Q[:, invperm]
        C = C[:, invperm]
        Losses = Losses[:, invperm]
        g_idx = g_idx[invperm]
    return {
        "Q": Q,
        "codes": C.to(torch.uint8),
        "scales": torch.cat(scale_list, dim=1),
        "zeros": torch.cat(zero_list, dim=1).to(torch.uint8),
        "g_idx": g_idx,
        "losses": Losses,
        "error": float(torch.sum(Losses)),
        "perm": perm,
    }


def rtn(W, bits, sym, groupsize):
    """Round to nearest on the same grid (find_params per group of the unmodified W)."""
    W = W.float()
    n, k = W.shape
    g = groupsize if groupsize != -1 else k
    out = torch.zeros_like(W)
    for i in range(0, k, g):
        qz = Quantizer(bits, sym)
        qz.find_params(W[:, i:i + g])
        out[:, i:i + g] = quantize(W[:, i:i + g], qz.scale, qz.zero, qz.maxq)
    return out


def proxy_loss(W, H, Q):
    """tr((W - Q) H (W - Q)^T) in fp64."""
    d = (W.double() - Q.double())
    return float(torch.sum((d @ H.double()) * d))


# ---- test layers ------------------------------------------------------------------------------------------------

def make_layer(n, k, tokens, seed, outliers=(), dead=()):
    """W ~ N(0, 1) (f16); H = (2 / tokens) X X^T from correlated inputs X = Z A (A mixes neighbouring channels),
    `outliers` channels scaled by 20, `dead` channels zero, normalised to mean diag 1 and rounded to f16."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn((n, k), generator=g, dtype=torch.float64)
    Z = torch.randn((tokens, k), generator=g, dtype=torch.float64)
    A = torch.eye(k, dtype=torch.float64)
    for shift, weight in ((1, 0.6), (2, 0.3), (5, 0.2)):
        A += weight * torch.diag(torch.ones(k - shift, dtype=torch.float64), shift)
    X = Z @ A + 0.3 * torch.randn((tokens, 1), generator=g, dtype=torch.float64)  # a shared component
    for c in outliers:
        X[:, c] *= 20.0
    for c in dead:
        X[:, c] = 0.0
    H = (2.0 / tokens) * X.T @ X
    H = H / torch.mean(torch.diag(H))
    H16 = H.to(torch.float16)
    # Distinct diagonal values (and none equal to the 1 that dead columns get): fp16 rounding makes ties, and
    # act-order would then depend on how torch's argsort (not stable) orders them.
    import numpy as np
    diag = H16.diagonal().numpy().copy()
    seen = {np.float16(1.0)}
    for i in range(k):
        if i in dead:
            continue
        while diag[i] in seen:
            diag[i] = np.nextafter(diag[i], np.float16(np.inf))
        seen.add(diag[i])
    H16 = H16.clone()
    H16[range(k), range(k)] = torch.from_numpy(diag)
    assert torch.all(torch.isfinite(H16))
    eig = torch.linalg.eigvalsh(H16.double())
    damp = 0.01 * torch.mean(torch.diag(H16.double()))
    assert float(eig[0]) + float(damp) > 0, (float(eig[0]), float(damp))
    return W.to(torch.float16), H16


LAYERS = {
    # name: (n, k, tokens, seed, outlier channels, dead channels)
    "k96": (64, 96, 512, 11, (7, 40, 41, 90), (13, 77)),
    "k288": (48, 288, 1024, 12, (3, 100, 200, 201, 287), (150,)),
}

# name, layer, bits, sym, group size, act-order, static groups, mse
CASES = [
    ("k96_b4_asym_g32", "k96", 4, False, 32, False, False, False),
    ("k96_b4_sym_g32_act", "k96", 4, True, 32, True, False, False),
    ("k96_b3_asym_gm1_act", "k96", 3, False, -1, True, False, False),
    ("k96_b3_sym_g32_act_static", "k96", 3, True, 32, True, True, False),
    ("k96_b4_asym_g32_mse", "k96", 4, False, 32, False, False, True),
    ("k96_b2_asym_g32", "k96", 2, False, 32, False, False, False),
    ("k96_b8_sym_gm1", "k96", 8, True, -1, False, False, False),
    ("k288_b4_asym_g32", "k288", 4, False, 32, False, False, False),
    ("k288_b4_sym_gm1_act", "k288", 4, True, -1, True, False, False),
    ("k288_b3_asym_g96_act", "k288", 3, False, 96, True, False, False),
    ("k288_b4_asym_g64_act_static", "k288", 4, False, 64, True, True, False),
    ("k288_b3_sym_g32_act", "k288", 3, True, 32, True, False, False),
    ("k288_b3_asym_g96", "k288", 3, False, 96, False, False, False),
    ("k288_b4_sym_g32_mse_act", "k288", 4, True, 32, True, False, True),
    ("k288_b4_sym_g128", "k288", 4, True, 128, False, False, False),
]


def check_against_repo(repo, W, H, case_result, bits, sym, groupsize, actorder, static_groups, mse):
    """Runs the repository's own GPTQ.fasterquant on an nn.Linear and compares its weight with our Q."""
    sys.path.insert(0, repo)
    import contextlib
    import io

    import gptq as ref_gptq
    import quant as ref_quant
    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = W.float().clone()
    g = ref_gptq.GPTQ(layer)
    g.H = H.float().clone()
    g.quantizer = ref_quant.Quantizer()
    g.quantizer.configure(bits, perchannel=True, sym=sym, mse=mse)
    sync = torch.cuda.synchronize
    torch.cuda.synchronize = lambda: None  # the reference calls it unconditionally; this is the CPU
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            g.fasterquant(groupsize=groupsize, actorder=actorder, static_groups=static_groups)
    finally:
        torch.cuda.synchronize = sync
    if not torch.equal(layer.weight.data, case_result["Q"]):
        diff = (layer.weight.data != case_result["Q"]).sum().item()
        raise SystemExit("reference repository disagrees on %d weights" % diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gptq-repo", help="checkout of IST-DASLab/gptq to cross-check every case against")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the result must not depend on the machine's thread count
    from safetensors.torch import save_file

    tensors, meta = {}, {"generator": "tests/data/gptq/make_gptq_reference.py", "torch": torch.__version__,
                         "layers": {}, "cases": []}
    layers = {}
    for name, (n, k, tokens, seed, outliers, dead) in LAYERS.items():
        W, H = make_layer(n, k, tokens, seed, outliers, dead)
        layers[name] = (W, H)
        tensors[name + ".W"] = W.contiguous()
        tensors[name + ".H"] = H.contiguous()
        meta["layers"][name] = {"n": n, "k": k, "tokens": tokens, "seed": seed, "outliers": list(outliers),
                                "dead": list(dead)}
    for name, layer, bits, sym, gs, act, static, mse in CASES:
        W, H = layers[layer]
        Wf, Hf = W.float(), H.float()
        r = fasterquant(Wf, Hf, bits, sym, gs, act, static, mse=mse)
        if args.gptq_repo:
            check_against_repo(args.gptq_repo, Wf, Hf, r, bits, sym, gs, act, static, mse)
        tensors[name + ".codes"] = r["codes"].contiguous()
        tensors[name + ".scales"] = r["scales"].contiguous()
        tensors[name + ".zeros"] = r["zeros"].contiguous()
        tensors[name + ".g_idx"] = r["g_idx"].contiguous()
        proxy = proxy_loss(Wf, Hf, r["Q"])
        proxy_rtn = proxy_loss(Wf, Hf, rtn(Wf, bits, sym, gs))
        meta["cases"].append({"name": name, "layer": layer, "bits": bits, "symmetric": sym, "group_size": gs,
                              "act_order": act, "static_groups": static, "mse": mse, "error": r["error"],
                              "proxy_loss": proxy, "proxy_loss_rtn": proxy_rtn})
        print("%-30s error %12.6f  proxy %12.6f  rtn %12.6f  ratio %.3f" %
              (name, r["error"], proxy, proxy_rtn, proxy / proxy_rtn))
    save_file(tensors, os.path.join(OUT, "gptq_reference.safetensors"))
    with open(os.path.join(OUT, "gptq_reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    if args.gptq_repo:
        print("every case equals %s's GPTQ.fasterquant bit for bit" % args.gptq_repo)


if __name__ == "__main__":
    main()
