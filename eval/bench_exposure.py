"""Candidate-scoring throughput: one-by-one vs batched (plain transformers) vs ours.

    python -m eval.bench_exposure [--quick] [--threads N] [--n N] [--models demo,gpt2-small]

Scores the same credit-card candidates after a real-world prefix three ways in
one run and checks they agree to 1e-4 bits:

* ``one_by_one``: one full forward over ``context + secret`` per candidate,
  ``log_softmax`` over the logits, the secret tokens' log-probs summed;
* ``batched``: what a competent ``transformers`` user writes: the same token
  sequences right-padded into batches with an attention mask, one forward per
  batch, ``log_softmax`` over the logits, ``gather`` at the secret positions;
* ``ours``: :func:`scrubber.measure.exposure.score_candidates` (prefix once through
  the model and its KV reused, only secret tokens fed, LM head only where a
  score reads it, sibling candidates sharing their common token path).

All three score exactly the same tokens (the secret's tokens located by
offsets, :func:`scrubber.measure.exposure.secret_tokens`); tokenization is timed for
each.  Prints a JSON list, one entry per model shape, with candidates per
second (``*_cps``) and the ratios.  Random weights: throughput does not depend
on them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pydoc_data.topics  # noqa: E402
import torch  # noqa: E402

from canaries.formats import get_format  # noqa: E402
from scrubber.measure.exposure import score_candidates, secret_tokens  # noqa: E402
from scrubber.training.model_factory import small_causal_lm  # noqa: E402
from scrubber.training.tokenizer import train_bpe_tokenizer  # noqa: E402

PREFIX = "My credit card number is "
LN2 = math.log(2.0)

# name -> (layers, width, heads, model vocabulary); the tokenizer is the demo's
# 2048-token BPE; for GPT-2-small the model's vocabulary (its LM head) is 50257
# wide, as GPT-2's, the ids above the tokenizer's simply never being fed.
SHAPES = {
    "demo": (4, 128, 4, None),
    "gpt2-small": (12, 768, 12, 50257),
}


def build(name: str, tok):
    layers, width, heads, vocab = SHAPES[name]
    model = small_causal_lm(
        vocab or len(tok), arch="gpt2", n_layer=layers, d_model=width, n_head=heads,
        n_positions=1024 if name == "gpt2-small" else 256,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attn_implementation="sdpa",
    )  # fmt: skip
    return model.eval()


def one_by_one(model, tok, prefix, cands) -> np.ndarray:
    out = np.zeros(len(cands))
    with torch.inference_mode():
        for i, span in enumerate(secret_tokens(tok, prefix, cands)):
            ids = torch.tensor([span.context + span.scored])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            start = len(span.context)
            pos = torch.arange(start - 1, start - 1 + len(span.scored))
            out[i] = -float(logp[pos, torch.tensor(span.scored)].sum()) / LN2
    return out


def batched(model, tok, prefix, cands, batch_size: int) -> np.ndarray:
    spans = secret_tokens(tok, prefix, cands)
    pad = tok.pad_token_id
    out = np.zeros(len(cands))
    with torch.inference_mode():
        for b in range(0, len(spans), batch_size):
            chunk = spans[b : b + batch_size]
            seqs = [s.context + s.scored for s in chunk]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            labels = torch.zeros((len(seqs), width), dtype=torch.bool)  # positions whose next token is scored
            for r, (s, seq) in enumerate(zip(chunk, seqs)):
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
                labels[r, len(s.context) - 1 : len(seq) - 1] = True
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            nxt = torch.cat([ids[:, 1:], torch.full((len(seqs), 1), pad)], dim=1)
            tok_lp = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
            out[b : b + len(chunk)] = (-(tok_lp * labels).sum(dim=1) / LN2).double().numpy()
    return out


def ours(model, tok, prefix, cands, batch_size: int) -> np.ndarray:
    return score_candidates(model, tok, prefix, cands, batch_size=batch_size)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench(name: str, tok, n: int, batch_size: int, threads: int, seed: int) -> dict:
    fmt = get_format("credit_card")
    cands = fmt.sample_many(n, random.Random(seed))
    model = build(name, tok)
    warm = cands[:4]  # first calls pay one-off allocation costs
    one_by_one(model, tok, PREFIX, warm)
    batched(model, tok, PREFIX, warm, batch_size)
    ours(model, tok, PREFIX, warm, batch_size)
    a, t_one = timed(one_by_one, model, tok, PREFIX, cands)
    b, t_bat = timed(batched, model, tok, PREFIX, cands, batch_size)
    c, t_our = timed(ours, model, tok, PREFIX, cands, batch_size)
    diff = float(max(np.abs(a - b).max(), np.abs(a - c).max(), np.abs(b - c).max()))
    spans = secret_tokens(tok, PREFIX, cands[:1])[0]
    layers, width, heads, vocab = SHAPES[name]
    return {
        "model": name,
        "shape": {"layers": layers, "width": width, "heads": heads, "vocab": vocab or len(tok),
                  "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)},
        "one_by_one_cps": round(n / t_one, 2),
        "batched_cps": round(n / t_bat, 2),
        "ours_cps": round(n / t_our, 2),
        "ratio_vs_one_by_one": round(t_one / t_our, 2),
        "ratio_vs_batched": round(t_bat / t_our, 2),
        "max_abs_diff_bits": diff,
        "agree_1e-4": diff <= 1e-4,
        "settings": {
            "n_candidates": n, "prefix": PREFIX, "secret_format": fmt.name,
            "context_tokens": len(spans.context), "secret_tokens_example": len(spans.scored),
            "batch_size": batch_size, "threads": threads, "dtype": "float32",
            "attention": "sdpa", "device": "cpu",
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        },
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench_exposure", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few candidates (a smoke run)")
    p.add_argument("--n", type=int, default=None, help="candidates per model (default 256; gpt2-small 128)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="candidates per batch for batched and ours")
    p.add_argument("--models", default="demo,gpt2-small", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    texts = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    tok = train_bpe_tokenizer(texts, vocab_size=2048)
    results = []
    for name in args.models.split(","):
        name = name.strip()
        if name not in SHAPES:
            p.error(f"unknown model shape {name!r}")
        n = args.n or (16 if args.quick else (128 if name == "gpt2-small" else 256))
        results.append(bench(name, tok, n, args.batch_size, args.threads, args.seed))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0 if all(r["agree_1e-4"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
