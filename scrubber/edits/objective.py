"""The data side of an update: which texts change, and the loss on them.

An :class:`EditPair` is one training occurrence z of a secret and its corrected
version z~ (the same text, the secret replaced by a substitute). Losses are
negative log-likelihoods in nats, summed over the secret's tokens (``secret``
span, the default: the rest of the text is unchanged between z and z~, so it
only adds noise to g) or over the whole text (``sequence``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scrubber.measure.context import start_ids
from scrubber.measure.exposure.head import model_parts

LossSpan = Literal["secret", "sequence"]


@dataclass(frozen=True)
class EditPair:
    canary_id: str
    original: str
    substitute: str
    span: tuple[int, int]
    """Character span of the secret in ``original``."""
    sub_span: tuple[int, int]
    """Character span of the substitute in ``substitute``."""


def make_edit_pairs(
    canary_id: str, documents: Sequence[str], secret: str, substitute: str, window: int = 400
) -> list[EditPair]:
    """One pair per occurrence of ``secret``; long documents are cut to a window
    before the occurrence (that is all the model conditions on at that point)."""
    pairs: list[EditPair] = []
    for doc in documents:
        start = doc.find(secret)
        while start != -1:
            lo = max(0, start - window)
            end = start + len(secret)
            orig = doc[lo:end]
            sub = doc[lo:start] + substitute
            s = start - lo
            pairs.append(
                EditPair(canary_id, orig, sub, (s, s + len(secret)), (s, s + len(substitute)))
            )
            start = doc.find(secret, end)
    return pairs


@dataclass
class EncodedTexts:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    """1 where the token at position t+1 is scored given positions <= t."""


def encode_with_spans(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]] | None,
    loss_span: LossSpan = "secret",
    device: torch.device | str = "cpu",
) -> EncodedTexts:
    """Tokenize with the document-start token and mark which targets count.

    Secret tokens are found from the offset mapping: every token overlapping the
    span is scored (byte-level BPE merges the preceding space into the first
    secret token, so counting prefix tokens would be wrong).
    """
    head = start_ids(tokenizer)
    rows, masks = [], []
    for i, text in enumerate(texts):
        enc = tokenizer(text, return_offsets_mapping=True)
        ids = head + list(enc["input_ids"])
        offsets = [(0, 0)] * len(head) + [tuple(o) for o in enc["offset_mapping"]]
        if loss_span == "sequence" or spans is None:
            m = [0] * len(head) + [1] * len(enc["input_ids"])
        else:
            s, e = spans[i]
            m = [1 if (a < e and b > s and b > a) else 0 for a, b in offsets]
        m[0] = 0  # the first token has no context to be predicted from
        rows.append(ids)
        masks.append(m)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for i, (r, m) in enumerate(zip(rows, masks)):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
        loss_mask[i, : len(r) - 1] = torch.tensor(m[1:], dtype=torch.float32)
    return EncodedTexts(input_ids.to(device), attention.to(device), loss_mask.to(device))


def token_nll(model: PreTrainedModel, batch: EncodedTexts) -> torch.Tensor:
    """Per-target negative log-likelihood (nats), shape (batch, seq-1), zero where unscored.

    The LM head runs only at scored positions (the secret's span, a handful of the
    sequence's): a full ``[pairs, seq, |V|]`` float32 logits tensor for 84 documents of a
    49k-vocabulary model is gigabytes, allocated and freed every step, which is where a
    scrub's time went (half of it in the kernel). Models whose logits are not exactly
    ``lm_head(hidden)`` (see :mod:`scrubber.measure.exposure.head`) take the full forward.
    """
    parts = model_parts(model)
    tgt = batch.input_ids[:, 1:]
    if not parts.split:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        return nll * batch.loss_mask
    assert parts.body is not None and parts.head is not None
    hidden = parts.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    rows, cols = batch.loss_mask.nonzero(as_tuple=True)
    logits = parts.head(hidden[rows, cols]).float()
    picked = logits.gather(-1, tgt[rows, cols].unsqueeze(-1)).squeeze(-1)
    scored = (torch.logsumexp(logits, dim=-1) - picked) * batch.loss_mask[rows, cols]
    nll = torch.zeros_like(batch.loss_mask, dtype=scored.dtype)
    return nll.index_put((rows, cols), scored)


def text_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]] | None = None,
    loss_span: LossSpan = "secret",
) -> torch.Tensor:
    """Summed NLL (nats) of each text's scored tokens; differentiable."""
    device = next(model.parameters()).device
    batch = encode_with_spans(tokenizer, texts, spans, loss_span, device)
    return token_nll(model, batch).sum(dim=1)


def original_nll(model, tokenizer, pairs: Sequence[EditPair], loss_span: LossSpan = "secret") -> torch.Tensor:
    return text_nll(model, tokenizer, [p.original for p in pairs], [p.span for p in pairs], loss_span)


def substitute_nll(model, tokenizer, pairs: Sequence[EditPair], loss_span: LossSpan = "secret") -> torch.Tensor:
    return text_nll(model, tokenizer, [p.substitute for p in pairs], [p.sub_span for p in pairs], loss_span)


def retain_loss(model: PreTrainedModel, blocks: torch.Tensor) -> torch.Tensor:
    """Mean token NLL on packed retain blocks (the usual LM loss)."""
    blocks = blocks.to(next(model.parameters()).device)
    return model(input_ids=blocks, labels=blocks).loss
