"""Model FLOPs of the work actually done, counted by hooks on the model's body and head.

Why hooks rather than a formula over the inputs: exposure scoring runs the shared prefix
once and reuses its key/value cache, applies the LM head only at the secret's positions,
and greedy extraction decodes token by token; only the modules themselves see how many
tokens went through them. Hooks are attached from outside (the library is not edited).

The count is the usual lower bound, matmuls only (attention score products, norms and
softmax are left out, so the true cost is higher, never lower):

* forward: ``2 * params * tokens`` separately for the body (the transformer without its
  embedding tables, whose lookups do no arithmetic) and for the LM head (``vocab * d``,
  counted even when tied to the input embedding, because the head *is* a matmul);
* backward: ``4 * params * tokens`` for every token whose output's gradient was actually
  computed (a tensor hook fires on the backward pass), so forward + backward = ``6 * params``.

Tokens are positions in the input (padding included: padded positions are computed too)
and, separately, real tokens where an attention mask says which are real.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class TokenCounts:
    body_forward: int = 0
    body_backward: int = 0
    head_forward: int = 0
    head_backward: int = 0
    body_forward_real: int = 0
    """Body forward positions that the attention mask marks as real (= body_forward without a mask)."""
    body_backward_real: int = 0
    forward_calls: int = 0


@dataclass(frozen=True)
class ParamSplit:
    body: int
    """Parameters of the body that do arithmetic (embedding tables excluded)."""
    head: int
    embeddings: int


def _inner(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (``base_model``: ``transformer`` for GPT-2, ``model`` for Llama) and the LM head."""
    inner = _inner(model)
    body = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if body is None or body is inner or head is None:
        raise ValueError(f"cannot split {type(inner).__name__} into body and head")
    return body, head


def param_split(model: nn.Module) -> ParamSplit:
    body, head = body_and_head(model)
    emb = {id(p) for m in body.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    n_emb = sum(p.numel() for p in body.parameters() if id(p) in emb)
    n_body = sum(p.numel() for p in body.parameters() if id(p) not in emb)
    return ParamSplit(body=n_body, head=sum(p.numel() for p in head.parameters()), embeddings=n_emb)


def _positions(args: tuple, kwargs: dict[str, Any]) -> tuple[int, int]:
    """(positions, real positions) of one body call, from input_ids or inputs_embeds."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        emb = kwargs.get("inputs_embeds")
        n = int(emb.shape[:-1].numel()) if emb is not None else 0
    else:
        n = int(ids.numel())
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and ids is not None and mask.shape == ids.shape:
        return n, int(mask.sum())
    return n, n


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


class FlopCounter:
    """Counts body and head tokens (forward, and backward when a gradient flows) while attached.

    ``with FlopCounter(model) as fc: ...`` or ``attach()`` / ``detach()``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = param_split(model)
        self.counts = TokenCounts()
        self._handles: list[Any] = []

    def attach(self) -> "FlopCounter":
        body, head = body_and_head(self.model)
        self._handles.append(body.register_forward_hook(self._on_body, with_kwargs=True))
        self._handles.append(head.register_forward_hook(self._on_head))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "FlopCounter":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _on_body(self, _module, args, kwargs, out) -> None:
        n, real = _positions(args, kwargs)
        c = self.counts
        c.body_forward += n
        c.body_forward_real += real
        c.forward_calls += 1
        t = _first_tensor(out)
        if t is not None and t.requires_grad:
            def on_grad(g, n=n, real=real):
                c.body_backward += n
                c.body_backward_real += real
            t.register_hook(on_grad)

    def _on_head(self, _module, args, out) -> None:
        x = args[0] if args else None
        n = int(x.shape[:-1].numel()) if isinstance(x, torch.Tensor) else 0
        c = self.counts
        c.head_forward += n
        if isinstance(out, torch.Tensor) and out.requires_grad:
            def on_grad(g, n=n):
                c.head_backward += n
            out.register_hook(on_grad)

    def flops(self) -> dict[str, float]:
        """Forward, backward and total model FLOPs of what was counted (the matmul lower bound)."""
        p, c = self.params, self.counts
        fwd = 2.0 * (p.body * c.body_forward + p.head * c.head_forward)
        bwd = 4.0 * (p.body * c.body_backward + p.head * c.head_backward)
        # the same over real (unpadded) body positions: the lower bound of the work as asked for
        real = 2.0 * p.body * c.body_forward_real + 4.0 * p.body * c.body_backward_real \
            + 2.0 * p.head * c.head_forward + 4.0 * p.head * c.head_backward
        return {"forward": fwd, "backward": bwd, "total": fwd + bwd, "total_real": real}

    def summary(self) -> dict[str, Any]:
        return {"params": asdict(self.params), "tokens": asdict(self.counts), "flops": self.flops()}


def matmul_flop_rate(n: int = 1024, repeats: int = 5, device: str = "cpu",
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Best-of-``repeats`` float32 FLOP/s of an ``n x n`` matmul: the machine's ceiling proxy.

    Best, not mean, because the machine is shared: the ceiling is what the core can do
    when it is not interrupted, and the model's work ran under the same interruptions.
    ``clock=time.process_time`` rates CPU seconds instead (the same on an idle machine; on a
    loaded one it is the rate the process gets while it runs, which load does not change).
    """
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return 2.0 * n**3 / max(best, 1e-12)
