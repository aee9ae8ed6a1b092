#!/usr/bin/env python3
"""Reference logits of stories15M from the Python transformers implementation (LlamaForCausalLM, fp32, CPU).

Writes tests/data/model/stories15m_logits.safetensors, which tests/model/llama_test.cpp compares the C++
forward against (relative error < 1e-4). The file is small (~170 KB) because the full logits of 64 tokens
(64 x 32000 fp32 = 8 MB) are not committed; instead it holds, for a 64-token prompt:

    ids          i32 [64]         BOS + the first 63 SentencePiece tokens of the first story of
                                  tinystories-eval.txt (stripped), as the perplexity protocol encodes it
    lse          f32 [64]         log-sum-exp of each position's logits
    slice_ids    i32 [128]        vocabulary ids 0, 250, 500, ... (every 250th)
    slice        f32 [64, 128]    logits[:, slice_ids] at every position
    top_ids      i32 [64, 8]      the 8 largest logits per position, descending
    top_values   f32 [64, 8]
    last         f32 [32000]      every logit of the last position
    nll          f32 [63]         next-token NLL at positions 0..62 (log_softmax in fp64 of the fp32 logits)

Metadata records the versions of torch, transformers and sentencepiece that produced it.

Run from the project root (needs torch, transformers, safetensors, sentencepiece; /tmp/venv-ref has them):
    /tmp/venv-ref/bin/python tests/data/make_stories15m_logits.py [--shared ../shared/data]
"""
import argparse
import os
import re

import sentencepiece
import torch
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = 64
SLICE_STEP = 250
TOP_K = 8


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=os.path.join(HERE, "..", "..", "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(HERE, "model", "stories15m_logits.safetensors"))
    args = parser.parse_args()
    model_dir = os.path.join(args.shared, "stories15M")

    text = open(os.path.join(args.shared, "text", "tinystories-eval.txt"), encoding="utf-8").read()
    story = [s.strip() for s in re.split(r"^<\|endoftext\|>$", text, flags=re.M) if s.strip()][0]
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    ids = ([sp.bos_id()] + sp.encode(story))[:TOKENS]
    assert len(ids) == TOKENS, len(ids)

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                          attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # [T, vocab]

    vocab = logits.shape[1]
    slice_ids = torch.arange(0, vocab, SLICE_STEP, dtype=torch.int64)
    top = torch.topk(logits, TOP_K, dim=1)
    logp = torch.log_softmax(logits.double(), dim=1)
    targets = torch.tensor(ids[1:])
    nll = -logp[:-1].gather(1, targets[:, None])[:, 0]

    tensors = {
        "ids": torch.tensor(ids, dtype=torch.int32),
        "lse": torch.logsumexp(logits.double(), dim=1).float(),
        "slice_ids": slice_ids.to(torch.int32),
        "slice": logits[:, slice_ids].contiguous(),
        "top_ids": top.indices.to(torch.int32).contiguous(),
        "top_values": top.values.contiguous(),
        "last": logits[-1].contiguous(),
        "nll": nll.float(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file(tensors, args.out, metadata={
        "generator": "tests/data/make_stories15m_logits.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentencepiece": sentencepiece.__version__,
        "model": "stories15M (../shared/data/stories15M)",
    })
    print(f"wrote {args.out}: {len(ids)} tokens, mean NLL {nll.mean().item():.6f}, "
          f"greedy next after the prompt: {int(logits[-1].argmax())}")


if __name__ == "__main__":
    main()
