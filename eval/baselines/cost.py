"""Hardware-independent cost of a method: tokens through the model forward and backward.

A forward pre-hook on the model's input embedding counts the ids of every
call (with a KV cache only the new tokens, which is the work done). The
embedding, not the model's ``forward``, because exposure scoring calls the
transformer body and the head separately; every path goes through the embedding. A forward run with autograd on is counted again as backward tokens:
in the loops measured here every such forward is backpropagated. Wrapping the
model, rather than editing each method, counts scrubber's own methods and
their probes the same way as the baselines.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator

import torch


@dataclass
class TokenCost:
    forward_tokens: int = 0
    backward_tokens: int = 0

    @property
    def total(self) -> int:
        return self.forward_tokens + self.backward_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _tokens(args: tuple, kwargs: dict) -> int:
    x = args[0] if args else kwargs.get("input")
    return int(x.numel()) if isinstance(x, torch.Tensor) else 0


@contextlib.contextmanager
def count_tokens(model: torch.nn.Module) -> Iterator[TokenCost]:
    """Count tokens through ``model``'s input embedding while the block runs."""
    cost = TokenCost()

    def hook(_module, args, kwargs):
        n = _tokens(args, kwargs)
        cost.forward_tokens += n
        if torch.is_grad_enabled():
            cost.backward_tokens += n

    handle = model.get_input_embeddings().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield cost
    finally:
        handle.remove()
