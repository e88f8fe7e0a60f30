"""Log-perplexity of secret candidates given a prefix, in bits.

``score(candidate) = -sum_i log2 p(tok_i | context, tok_<i)`` over the tokens
covering the candidate (see :mod:`scrubber.measure.exposure.tokens`).  Lower means the
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

from scrubber.measure.exposure.head import ModelParts, model_parts, row_logprobs
from scrubber.measure.exposure.tokens import SecretTokens, secret_tokens

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

    def next_logprobs(self, paths: torch.Tensor) -> torch.Tensor:
        """Natural-log next-token distributions ``[P, |V|]`` after ``context + paths[i]``.

        ``paths`` ``[P, m]`` (``m`` may be 0) continue the cached context; only
        each path's last position goes through the head.  Used by the search,
        which extends partial secrets by every viable next token at once.
        """
        n_par, m = paths.shape
        if m == 0:
            return self.first.unsqueeze(0).expand(n_par, -1)
        cache = copy.deepcopy(self.cache)
        if n_par > 1:
            cache.batch_repeat_interleave(n_par)
        if self.parts.split:
            out = self.parts.body(input_ids=paths, past_key_values=cache, use_cache=True)
            logits = self.parts.head(out.last_hidden_state[:, -1]).float()
        else:
            out = self.parts.model(input_ids=paths, past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1].float()
        return torch.log_softmax(logits, dim=-1)

    def score(
        self, parents: torch.Tensor, child_parent: torch.Tensor, child_last: torch.Tensor
    ) -> torch.Tensor:
        """Natural-log probability of each child sequence ``parents[child_parent] + child_last``.

        ``parents`` ``[P, m]`` are the distinct all-but-last token paths: each
        goes through the model once, its hidden states give the log-probs of
        its own tokens 2..m, and its last state scores every child's last token.
        """
        n_par, m = parents.shape
        cache = copy.deepcopy(self.cache)
        if n_par > 1:
            cache.batch_repeat_interleave(n_par)
        if self.parts.split:
            out = self.parts.body(input_ids=parents, past_key_values=cache, use_cache=True)
            states, project = out.last_hidden_state, self.parts.head
        else:
            out = self.parts.model(input_ids=parents, past_key_values=cache, use_cache=True)
            states, project = out.logits, _identity
        flat = states.reshape(n_par * m, states.shape[-1])
        base = torch.arange(n_par, device=parents.device)[:, None] * m
        path_rows = (base + torch.arange(m - 1, device=parents.device)[None]).reshape(-1)
        last_rows = child_parent * m + (m - 1)
        lp = row_logprobs(
            project,
            flat,
            torch.cat([path_rows, last_rows]),
            torch.cat([parents[:, 1:].reshape(-1), child_last]),
        )
        path = self.first[parents[:, 0]] + lp[: path_rows.numel()].view(n_par, m - 1).sum(dim=1)
        return path[child_parent] + lp[path_rows.numel() :]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def score_token_spans(
    model: torch.nn.Module,
    spans: Sequence[SecretTokens],
    *,
    batch_size: int = 256,
    dtype: DType = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Bits for already-located token spans (the tokenizer-free core of :func:`score_candidates`).

    Spans are grouped by context (each context runs once), then by scored
    length (a batch needs no padding), then by all-but-last token path
    (siblings that differ only in their last token share one row, which makes
    enumerating a space about |alphabet| times cheaper).  ``batch_size``
    counts rows per forward.  Useful to callers that build spans themselves,
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

    def finish(idx: list[int], nat: torch.Tensor) -> None:
        nonlocal done
        result[idx] = -nat.double().cpu().numpy() / _LN2
        done += len(idx)
        if progress is not None:
            progress(done, n_total)

    def longs(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    with _scoring_mode(parts.model, resolve_dtype(dtype, device), device):
        for context, by_len in groups.items():
            runner = _ContextRunner(parts, context, device)
            for n, idx in sorted(by_len.items()):
                if n == 1:  # the context's last position scores them all
                    for b in range(0, len(idx), batch_size):
                        chunk = idx[b : b + batch_size]
                        finish(chunk, runner.first[longs([spans[i].scored[0] for i in chunk])])
                    continue
                by_parent: dict[tuple[int, ...], list[int]] = defaultdict(list)
                for i in idx:
                    by_parent[spans[i].scored[:-1]].append(i)
                keys = list(by_parent)
                for b in range(0, len(keys), batch_size):
                    batch = keys[b : b + batch_size]
                    children = [i for k in batch for i in by_parent[k]]
                    child_parent = [j for j, k in enumerate(batch) for _ in by_parent[k]]
                    nat = runner.score(
                        longs(batch), longs(child_parent), longs([spans[i].scored[-1] for i in children])
                    )
                    finish(children, nat)
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
