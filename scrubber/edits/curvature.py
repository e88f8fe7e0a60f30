"""Curvature-vector products over a parameter selection, never forming the matrix.

Two curvatures of a training loss L at the current weights θ:

* the exact Hessian H = ∇²L: double backward (default; the graph of ∇L is
  built once and reused for every product) or forward-over-reverse
  (`torch.func.jvp` of `torch.func.grad` through `functional_call`);
* the generalised Gauss-Newton G = Jᵀ H_out J, J the Jacobian of the logits
  and H_out the Hessian of the loss in the logits. For cross-entropy H_out is
  PSD, so G is PSD even where H is indefinite (measured on a small Llama: CG
  on H met negative curvature at once, docs/method.md). GGN products need the loss
  split at the logits: `OutputLoss`.

Both come as `CurvatureProduct` objects, v ↦ (scale·C + damping·I)v, which is
what the solvers take. Products need second derivatives of the model: fused
SDPA attention on CPU has none, so load models with
`attn_implementation="eager"` (or use `eager_attention`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .params import ParameterSelection

LossFn = Callable[[], torch.Tensor]


# ----------------------------------------------------------------------------- losses split at the logits


@dataclass
class OutputLoss:
    """A scalar loss written as loss_from_logits(logits_fn()), which GGN products need.

    `output_hvp(logits, u)` may give H_out·u in closed form; without it the
    product is taken by double backward through `loss_from_logits`.
    """

    logits_fn: Callable[[], torch.Tensor]
    loss_from_logits: Callable[[torch.Tensor], torch.Tensor]
    output_hvp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __call__(self) -> torch.Tensor:
        return self.loss_from_logits(self.logits_fn())


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast for the softmax; float64 stays float64 (tests need it)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def causal_lm_output_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> OutputLoss:
    """Mean next-token cross-entropy of a causal LM (HF semantics: shift inside, -100 ignored).

    Padding (attention_mask == 0) is ignored too. The closed-form H_out of
    softmax cross-entropy, (diag(p) − ppᵀ)/N per position, makes GGN products
    cost three backward passes and no extra forward.
    """
    if labels is None:
        labels = input_ids
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, -100)
    targets = labels[:, 1:]
    valid = targets != -100
    n_tokens = int(valid.sum())
    if n_tokens == 0:
        raise ValueError("no target tokens: every label is ignored")
    # Per-position weight of the mean loss over the full (unshifted) logits grid.
    weight = torch.zeros(labels.shape, dtype=torch.float64, device=labels.device)
    weight[:, :-1] = valid.double() / n_tokens

    def logits_fn() -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    def loss_from_logits(logits: torch.Tensor) -> torch.Tensor:
        shifted = _at_least_fp32(logits[:, :-1])
        return F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=-100)

    def output_hvp(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(_at_least_fp32(logits), dim=-1)
        uf = u.to(p.dtype)
        hu = p * uf - p * (p * uf).sum(-1, keepdim=True)
        return (hu * weight.to(hu).unsqueeze(-1)).to(u.dtype)

    return OutputLoss(logits_fn, loss_from_logits, output_hvp)


# ----------------------------------------------------------------------------- operators


class CurvatureProduct:
    """v ↦ (scale·C + damping·I)·v on flat vectors over a selection; counts its calls.

    `scale` turns a curvature estimated as a mean over a sample into the
    curvature of the loss the gradient was summed over (see second_order.py).
    Built at the current weights: build a new one after changing them (a
    reused graph refuses stale weights with autograd's version-counter error).
    """

    def __init__(
        self,
        raw: Callable[[torch.Tensor], torch.Tensor],
        numel: int,
        *,
        damping: float,
        scale: float,
        kind: str,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self._raw = raw
        self.numel = numel
        self.damping = float(damping)
        self.scale = float(scale)
        self.kind = kind
        self.dtype = dtype
        self.device = torch.device(device)
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.numel,):
            raise ValueError(f"expected a flat vector of {self.numel} values, got shape {tuple(v.shape)}")
        self.calls += 1
        out = self._raw(v)
        if self.scale != 1.0:
            out = out * self.scale
        if self.damping:
            out = out + self.damping * v
        return out

    def dense(self) -> torch.Tensor:
        """The matrix, column by column: for tests on tiny selections only."""
        if self.numel > 5000:
            raise ValueError(f"refusing to build a dense {self.numel}x{self.numel} matrix")
        eye = torch.eye(self.numel, dtype=self.dtype, device=self.device)
        return torch.stack([self(eye[i]) for i in range(self.numel)], dim=1)


def _second_derivative_hint(err: RuntimeError) -> RuntimeError:
    msg = str(err)
    missing = ("derivative for" in msg and "not implemented" in msg) or ("forward AD" in msg and "not support" in msg)
    if missing:
        return RuntimeError(
            "this model's attention kernel has no second or forward-mode derivative (fused SDPA on CPU): "
            "load it with attn_implementation='eager' or wrap the call in eager_attention(model). "
            f"Original error: {msg.splitlines()[0]}"
        )
    return err


def _zeros_for_none(grads, selection: ParameterSelection) -> torch.Tensor:
    return selection.flatten(list(grads))


class _ClosureModule(nn.Module):
    """Lets torch.func.functional_call swap the selected weights under an arbitrary closure."""

    def __init__(self, model: nn.Module, fn: Callable[[], torch.Tensor]):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self) -> torch.Tensor:
        return self._fn()


def _functional(selection: ParameterSelection, fn: Callable[[], torch.Tensor]):
    """fn as a pure function of the selected tensors (others stay as they are)."""
    wrapper = _ClosureModule(selection.model, fn)
    keys = ["model." + n for n in selection.names]

    def call(*tensors: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(wrapper, dict(zip(keys, tensors)), (), tie_weights=True, strict=False)

    return call


def make_hvp(
    loss_fn: LossFn,
    selection: ParameterSelection,
    *,
    damping: float = 0.0,
    scale: float = 1.0,
    method: Literal["double_backward", "forward_over_reverse"] = "double_backward",
) -> CurvatureProduct:
    """Exact Hessian-vector products of loss_fn() over the selection.

    double_backward builds ∇L with create_graph once and differentiates ⟨∇L, v⟩
    per product (one backward each); forward_over_reverse recomputes
    forward + backward per product under torch.func but needs no retained graph.
    """
    if method == "double_backward":
        try:
            with selection.requires_grad_only():
                loss = loss_fn()
                grads = torch.autograd.grad(loss, selection.params, create_graph=True, allow_unused=True)
        except RuntimeError as e:
            raise _second_derivative_hint(e) from e
        live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]

        def raw(v: torch.Tensor) -> torch.Tensor:
            if not live:
                return torch.zeros_like(v)
            vs = selection.unflatten(v)
            dot = sum((g * vs[i]).sum() for i, g in live)
            try:
                hv = torch.autograd.grad(dot, selection.params, retain_graph=True, allow_unused=True)
            except RuntimeError as e:
                raise _second_derivative_hint(e) from e
            return _zeros_for_none(hv, selection).to(v.dtype)

    elif method == "forward_over_reverse":
        f = _functional(selection, loss_fn)
        argnums = tuple(range(len(selection.params)))
        grad_f = torch.func.grad(f, argnums=argnums)

        def raw(v: torch.Tensor) -> torch.Tensor:
            primals = tuple(p.detach() for p in selection.params)
            tangents = tuple(selection.unflatten(v))
            try:
                _, hv = torch.func.jvp(grad_f, primals, tangents)
            except RuntimeError as e:
                raise _second_derivative_hint(e) from e
            return selection.flatten(list(hv)).to(v.dtype)

    else:
        raise ValueError(f"unknown HVP method {method!r}: use double_backward or forward_over_reverse")
    return CurvatureProduct(raw, selection.numel, damping=damping, scale=scale, kind="hessian", dtype=selection.dtype, device=selection.device)


def _output_product(output_loss: OutputLoss, logits: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """u ↦ H_out·u at fixed logits (closed form if the loss provides one)."""
    z = logits.detach()
    if output_loss.output_hvp is not None:
        return lambda u: output_loss.output_hvp(z, u)
    zg = z.clone().requires_grad_(True)
    gz = torch.autograd.grad(output_loss.loss_from_logits(zg), zg, create_graph=True)[0]
    if not gz.requires_grad:  # loss linear in the logits: H_out = 0
        return torch.zeros_like
    return lambda u: torch.autograd.grad(gz, zg, grad_outputs=u, retain_graph=True)[0]


def make_ggn_vp(
    output_loss: OutputLoss,
    selection: ParameterSelection,
    *,
    damping: float = 0.0,
    scale: float = 1.0,
    method: Literal["reverse", "forward"] = "reverse",
) -> CurvatureProduct:
    """Gauss-Newton products Jᵀ H_out J v over the selection: PSD for convex output losses.

    reverse: one forward kept; Jv by the double-vjp trick (differentiate Jᵀu
    in a dummy u), then H_out, then Jᵀ: three backward passes per product, no
    forward-mode AD needed. forward: Jv by torch.func.jvp, Jᵀw by a cached
    torch.func.vjp.
    """
    if method == "reverse":
        try:
            with selection.requires_grad_only():
                logits = output_loss.logits_fn()
                u = torch.zeros_like(logits, requires_grad=True)
                jt_u = torch.autograd.grad(logits, selection.params, grad_outputs=u, create_graph=True, allow_unused=True)
        except RuntimeError as e:
            raise _second_derivative_hint(e) from e
        h_out = _output_product(output_loss, logits)
        live = [(i, g) for i, g in enumerate(jt_u) if g is not None and g.requires_grad]

        def jvp(v: torch.Tensor) -> torch.Tensor:
            vs = selection.unflatten(v)
            jv = torch.autograd.grad(
                [g for _, g in live], u, grad_outputs=[vs[i] for i, _ in live], retain_graph=True, allow_unused=True
            )[0]
            return torch.zeros_like(logits) if jv is None else jv

        def vjp(w: torch.Tensor) -> torch.Tensor:
            return _zeros_for_none(
                torch.autograd.grad(logits, selection.params, grad_outputs=w, retain_graph=True, allow_unused=True),
                selection,
            )

    elif method == "forward":
        f = _functional(selection, output_loss.logits_fn)
        primals = tuple(p.detach() for p in selection.params)
        try:
            logits, vjp_fn = torch.func.vjp(f, *primals)
        except RuntimeError as e:
            raise _second_derivative_hint(e) from e
        h_out = _output_product(output_loss, logits)
        live = None  # torch.func returns zeros for tensors the logits do not use

        def jvp(v: torch.Tensor) -> torch.Tensor:
            try:
                return torch.func.jvp(f, primals, tuple(selection.unflatten(v)))[1]
            except RuntimeError as e:
                raise _second_derivative_hint(e) from e

        def vjp(w: torch.Tensor) -> torch.Tensor:
            return selection.flatten(list(vjp_fn(w)))

    else:
        raise ValueError(f"unknown GGN method {method!r}: use reverse or forward")

    def raw(v: torch.Tensor) -> torch.Tensor:
        if live is not None and not live:  # the logits do not depend on the selection
            return torch.zeros_like(v)
        return vjp(h_out(jvp(v))).to(v.dtype)

    return CurvatureProduct(raw, selection.numel, damping=damping, scale=scale, kind="ggn", dtype=selection.dtype, device=selection.device)


# ----------------------------------------------------------------------------- one-shot helpers and references


def hvp(loss_fn: LossFn, selection: ParameterSelection, v: torch.Tensor, *, damping: float = 0.0, **kw) -> torch.Tensor:
    """(H + damping·I)v once; build `make_hvp` yourself to reuse the graph across products."""
    return make_hvp(loss_fn, selection, damping=damping, **kw)(v)


def ggn_vp(output_loss: OutputLoss, selection: ParameterSelection, v: torch.Tensor, *, damping: float = 0.0, **kw) -> torch.Tensor:
    """(G + damping·I)v once."""
    return make_ggn_vp(output_loss, selection, damping=damping, **kw)(v)


def flat_gradient(loss_fn: LossFn, selection: ParameterSelection) -> torch.Tensor:
    """∇loss_fn() over the selection as a detached flat vector."""
    with selection.requires_grad_only():
        return selection.gradient(loss_fn()).detach()


def finite_difference_hvp(
    loss_fn: LossFn, selection: ParameterSelection, v: torch.Tensor, *, eps: float = 1e-3
) -> torch.Tensor:
    """(∇L(θ+εv̂) − ∇L(θ−εv̂))/(2ε)·‖v‖, the reference the exact products are tested against.

    Restores the weights bit for bit afterwards.
    """
    norm = float(v.norm())
    if norm == 0:
        return torch.zeros_like(v)
    direction = v / norm
    saved = selection.values()
    try:
        selection.add_(direction, alpha=eps)
        g_plus = flat_gradient(loss_fn, selection)
        selection.set_(saved)
        selection.add_(direction, alpha=-eps)
        g_minus = flat_gradient(loss_fn, selection)
    finally:
        selection.set_(saved)
    return (g_plus - g_minus) / (2 * eps) * norm


def dense_hessian(loss_fn: LossFn, selection: ParameterSelection, *, max_numel: int = 2000) -> torch.Tensor:
    """The full Hessian by torch.autograd.functional.hessian: a reference for tiny selections."""
    if selection.numel > max_numel:
        raise ValueError(f"selection has {selection.numel} parameters; dense Hessian limited to {max_numel}")
    f = _functional(selection, loss_fn)

    def of_flat(flat: torch.Tensor) -> torch.Tensor:
        return f(*selection.unflatten(flat))

    flat = selection.values()
    try:
        return torch.autograd.functional.hessian(of_flat, flat, vectorize=True)
    except RuntimeError:  # some ops have no batching rule: fall back to one row at a time
        return torch.autograd.functional.hessian(of_flat, flat)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Switch a transformers model to eager attention (which has second derivatives) for a block."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield model
        return
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(before)
