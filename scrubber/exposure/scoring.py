"""Log-perplexity of secret candidates given a prefix, in bits.

``score(candidate) = -sum_i log2 p(tok_i | context, tok_<i)`` over the tokens
covering the candidate (see :mod:`scrubber.exposure.tokens`).  Lower means the
model finds the candidate more likely.

:func:`score_candidates` is the fast path: each distinct context runs once and
its ``past_key_values`` are shared by every candidate conditioned on it;
candidates with the same number of scored tokens go through the model in one
batch with no padding; the first secret token is scored from the context's last
position, so a batch only feeds the secret's tokens but its last; logits are
computed only at those positions.  :func:`score_candidates_reference` is the
obvious one-full-forward-per-candidate version the fast path is tested against.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import defaultdict
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from scrubber.exposure.head import ModelParts, logits_logprobs, model_parts, target_logprobs
from scrubber.exposure.tokens import SecretTokens, secret_tokens

Progress = Callable[[int, int], None]
"""Called as ``progress(n_done, n_total)`` after each scored batch."""

DType = torch.dtype | str | None

_LN2 = math.log(2.0)


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to run under, or None for the model's own precision.

    ``"auto"`` means bf16 on a CUDA device that supports it, else full precision;
    ``"bf16"``/``"bfloat16"``/``torch.bfloat16`` force bf16 (CPU autocast supports it).
    """
    if dtype is None or dtype in ("none", "fp32", "float32", torch.float32):
        return None
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if dtype in ("bf16", "bfloat16", torch.bfloat16):
        return torch.bfloat16
    if dtype in ("fp16", "float16", torch.float16):
        return torch.float16
    raise ValueError(f"unsupported scoring dtype {dtype!r}: use None, 'auto', 'bf16' or 'fp16'")


@contextlib.contextmanager
def _scoring_mode(model: torch.nn.Module, dtype: torch.dtype | None, device: torch.device) -> Iterator[None]:
    """Eval mode (dropout would make scores random), no autograd, optional autocast; restores train mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if dtype is None:
                yield
            else:
                with torch.autocast(device_type=device.type, dtype=dtype):
                    yield
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class _ContextRunner:
    """Runs one context once, then scores batches of continuations against its cache."""

    def __init__(self, parts: ModelParts, context: Sequence[int], device: torch.device) -> None:
        self.parts = parts
        ids = torch.tensor([list(context)], dtype=torch.long, device=device)
        if parts.split:
            out = parts.body(input_ids=ids, use_cache=True)
            last = parts.head(out.last_hidden_state[:, -1]).float()
        else:
            out = parts.model(input_ids=ids, use_cache=True)
            last = out.logits[:, -1].float()
        self.cache = out.past_key_values
        if self.cache is None:
            raise ValueError("the model returned no past_key_values; it cannot be scored with a cache")
        # log p(first secret token | context), shared by every candidate of this context
        self.first = torch.log_softmax(last[0], dim=-1)

    def score(self, scored: torch.Tensor) -> torch.Tensor:
        """Natural-log probability of each row of ``scored`` ``[B, n]`` given the context."""
        total = self.first[scored[:, 0]]
        if scored.shape[1] == 1:
            return total
        inputs, targets = scored[:, :-1], scored[:, 1:]
        cache = copy.deepcopy(self.cache)
        if scored.shape[0] > 1:
            cache.batch_repeat_interleave(scored.shape[0])
        if self.parts.split:
            hidden = self.parts.body(input_ids=inputs, past_key_values=cache, use_cache=True)
            h = hidden.last_hidden_state
            lp = target_logprobs(self.parts.head, h.reshape(-1, h.shape[-1]), targets.reshape(-1))
        else:
            logits = self.parts.model(input_ids=inputs, past_key_values=cache, use_cache=True).logits
            lp = logits_logprobs(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return total + lp.view(targets.shape).sum(dim=1)


def score_token_spans(
    model: torch.nn.Module,
    spans: Sequence[SecretTokens],
    *,
    batch_size: int = 256,
    dtype: DType = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Bits for already-located token spans (the tokenizer-free core of :func:`score_candidates`).

    Spans are grouped by context (each context runs once) and by scored length
    (a batch needs no padding).  Useful to callers that build spans themselves,
    such as a search extending partial secrets token by token.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n_total = len(spans)
    result = np.zeros(n_total, dtype=np.float64)
    if n_total == 0:
        return result
    parts = model_parts(model)
    device = _device(parts.model)
    groups: dict[tuple[int, ...], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, span in enumerate(spans):
        if not span.context or not span.scored:
            raise ValueError("a token span needs a non-empty context and at least one scored token")
        groups[span.context][len(span.scored)].append(i)
    done = 0
    with _scoring_mode(parts.model, resolve_dtype(dtype, device), device):
        for context, by_len in groups.items():
            runner = _ContextRunner(parts, context, device)
            for _, idx in sorted(by_len.items()):
                for b in range(0, len(idx), batch_size):
                    chunk = idx[b : b + batch_size]
                    scored = torch.tensor(
                        [spans[i].scored for i in chunk], dtype=torch.long, device=device
                    )
                    nat = runner.score(scored).double().cpu().numpy()
                    result[chunk] = -nat / _LN2
                    done += len(chunk)
                    if progress is not None:
                        progress(done, n_total)
    return result


def score_candidates(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    candidates: Sequence[str],
    *,
    batch_size: int = 256,
    dtype: DType = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Log-perplexity in bits (float64 array) of each candidate secret after ``prefix``.

    ``dtype="bf16"`` (or ``"auto"`` on a bf16-capable GPU) runs under autocast:
    faster, but scores then differ from float32 by up to about 1e-2 relative.
    """
    spans = secret_tokens(tokenizer, prefix, candidates)
    return score_token_spans(model, spans, batch_size=batch_size, dtype=dtype, progress=progress)


def score_candidates_reference(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    candidates: Sequence[str],
    *,
    dtype: DType = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The slow, obviously-correct scorer: one full forward over context + secret per candidate."""
    spans = secret_tokens(tokenizer, prefix, candidates)
    device = _device(model)
    out = np.zeros(len(spans), dtype=np.float64)
    with _scoring_mode(model, resolve_dtype(dtype, device), device):
        for i, span in enumerate(spans):
            ids = torch.tensor([span.context + span.scored], dtype=torch.long, device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            start = len(span.context)
            total = 0.0
            for j, tok in enumerate(span.scored):
                total += float(logp[start + j - 1, tok])
            out[i] = -total / _LN2
            if progress is not None:
                progress(i + 1, len(spans))
    return out
