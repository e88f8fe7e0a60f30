"""K-FAC / EK-FAC: a Kronecker-factored Fisher (≈ GGN) whose damped inverse costs two small eigenproblems per layer.

For a linear layer s = W a (nn.Linear, or GPT-2's Conv1D which stores Wᵀ),
the per-token gradient is g aᵀ, g = ∂ℓ/∂s. K-FAC approximates the Fisher of
the mean loss by A ⊗ G with A = E[a aᵀ] over tokens and G = Σ g gᵀ / N_loss
(each token treated as an example: "K-FAC expand"). With eigenbases
A = Q_A Λ_A Q_Aᵀ, G = Q_G Λ_G Q_Gᵀ the damped inverse is exact for the
factored matrix:

    (G ⊗ A + λI)⁻¹ vec(V) = Q_G [(Q_Gᵀ V Q_A) / (λ_G λ_Aᵀ + λ)] Q_Aᵀ

EK-FAC (George et al. 2018) keeps the eigenbases but refits the eigenvalues
to the per-token projected gradients (a second pass over the data).
`fisher="mc"` samples labels from the model (its expectation is the GGN);
`"empirical"` uses the true labels (rank-deficient, cheaper to reason about).

Use it where CG is too slow (one fit, then each solve is a few matmuls), or
as CG's preconditioner. Only Linear/Conv1D weights and biases are covered;
other selected tensors (norms, embeddings) get curvature 0, i.e. g/λ, and are
listed in `uncovered`. A factor is dim×dim: a large vocabulary's lm_head
(G of vocab²) is refused above `max_factor_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .params import ParameterSelection

Batch = Mapping[str, torch.Tensor]


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2


@dataclass
class LayerFactors:
    """One layer's factors, in the canonical orientation V[out, in(+1 for bias)]."""

    name: str
    module: nn.Module
    conv1d: bool
    weight_index: int | None
    bias_index: int | None
    a_sum: torch.Tensor
    g_sum: torch.Tensor
    n_rows: int = 0
    qa: torch.Tensor | None = None
    la: torch.Tensor | None = None
    qg: torch.Tensor | None = None
    lg: torch.Tensor | None = None
    ekfac: torch.Tensor | None = None  # refitted eigenvalues [out, in_aug]
    ekfac_rows: int = 0

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.weight_index is not None:
            parts.append(x)
        if self.bias_index is not None:
            parts.append(torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device))
        return torch.cat(parts, dim=1)


class KFAC:
    """A fitted K-FAC (or EK-FAC) approximation over a ParameterSelection.

    Build with `KFAC.fit`; then `apply_inverse(g, damping)` ≈ (scale·F + λI)⁻¹g.
    """

    def __init__(self, selection: ParameterSelection, layers: list[LayerFactors], uncovered: list[str], *,
                 n_loss_tokens: int, fisher: str, damping: float):
        self.selection = selection
        self.layers = layers
        self.uncovered = uncovered
        self.n_loss_tokens = n_loss_tokens
        self.fisher = fisher
        self.damping = damping

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        selection: ParameterSelection,
        batches: Sequence[Batch] | Iterable[Batch],
        *,
        fisher: Literal["mc", "empirical"] = "mc",
        ekfac: bool = False,
        n_samples: int = 1,
        damping: float = 1e-3,
        logits_fn: Callable[[Batch], torch.Tensor] | None = None,
        shift_labels: bool = True,
        seed: int = 0,
        max_factor_dim: int = 8192,
    ) -> "KFAC":
        """Collect factors over `batches` (dicts with input_ids, optional attention_mask and labels).

        logits_fn(batch) defaults to model(input_ids, attention_mask).logits;
        shift_labels follows HF causal-LM convention (set False for a model
        whose logits[i] predicts labels[i]). EK-FAC iterates the batches twice:
        pass a list.
        """
        if fisher not in ("mc", "empirical"):
            raise ValueError(f"unknown fisher {fisher!r}: use mc or empirical")
        model = selection.model
        if logits_fn is None:
            def logits_fn(b: Batch) -> torch.Tensor:
                return model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask")).logits

        index = {id(p): i for i, p in enumerate(selection.params)}
        layers: list[LayerFactors] = []
        covered: set[int] = set()
        for name, mod in model.named_modules():
            if not (isinstance(mod, nn.Linear) or _is_conv1d(mod)):
                continue
            w = index.get(id(mod.weight))
            b = index.get(id(mod.bias)) if getattr(mod, "bias", None) is not None else None
            if w in covered:
                w = None
            if b in covered:
                b = None
            if w is None and b is None:
                continue
            conv = _is_conv1d(mod)
            in_dim, out_dim = (mod.weight.shape if conv else mod.weight.shape[::-1])
            in_aug = (in_dim if w is not None else 0) + (1 if b is not None else 0)
            if max(in_aug, out_dim) > max_factor_dim:
                raise ValueError(
                    f"K-FAC factor for {name} would be {max(in_aug, out_dim)}² (> max_factor_dim={max_factor_dim}): "
                    "leave this layer out of the selection or use CG"
                )
            covered.update(i for i in (w, b) if i is not None)
            kw = dict(dtype=torch.float64, device=mod.weight.device)
            layers.append(LayerFactors(name, mod, conv, w, b, torch.zeros(in_aug, in_aug, **kw), torch.zeros(out_dim, out_dim, **kw)))
        uncovered = [n for i, n in enumerate(selection.names) if i not in covered]
        if not layers:
            raise ValueError("K-FAC covers no tensor of this selection: it needs Linear/Conv1D weights or biases")

        gen = torch.Generator(device="cpu").manual_seed(seed)
        batches = list(batches) if ekfac else batches
        n_loss = 0
        for batch in batches:
            n_loss += _pass(selection, layers, batch, logits_fn, fisher, n_samples, shift_labels, gen, mode="factors")
        if n_loss == 0:
            raise ValueError("K-FAC saw no target tokens")
        for layer in layers:
            a = layer.a_sum / max(layer.n_rows, 1)
            g = layer.g_sum / n_loss
            layer.la, layer.qa = torch.linalg.eigh(a)
            layer.lg, layer.qg = torch.linalg.eigh(g)
            layer.la.clamp_(min=0)
            layer.lg.clamp_(min=0)
        if ekfac:
            for layer in layers:
                layer.ekfac = torch.zeros(layer.lg.numel(), layer.la.numel(), dtype=torch.float64, device=layer.la.device)
            n2 = 0
            for batch in batches:
                n2 += _pass(selection, layers, batch, logits_fn, fisher, n_samples, shift_labels, gen, mode="ekfac")
            for layer in layers:
                layer.ekfac /= n2
        return cls(selection, layers, uncovered, n_loss_tokens=n_loss, fisher=fisher, damping=damping)

    # ------------------------------------------------------------------ using

    def _eigenvalues(self, layer: LayerFactors) -> torch.Tensor:
        if layer.ekfac is not None:
            return layer.ekfac
        return layer.lg[:, None] * layer.la[None, :]

    def _to_matrix(self, layer: LayerFactors, tensors: list[torch.Tensor]) -> torch.Tensor:
        cols = []
        if layer.weight_index is not None:
            w = tensors[layer.weight_index].double()
            cols.append(w.t() if layer.conv1d else w)
        if layer.bias_index is not None:
            cols.append(tensors[layer.bias_index].double()[:, None])
        return torch.cat(cols, dim=1)

    def _from_matrix(self, layer: LayerFactors, m: torch.Tensor, out: list[torch.Tensor]) -> None:
        if layer.weight_index is not None:
            w = m[:, : m.shape[1] - (1 if layer.bias_index is not None else 0)]
            out[layer.weight_index] = w.t() if layer.conv1d else w
        if layer.bias_index is not None:
            out[layer.bias_index] = m[:, -1]

    def apply_inverse(self, grads: torch.Tensor, damping: float | None = None, *, scale: float = 1.0) -> torch.Tensor:
        """≈ (scale·F + λI)⁻¹ grads for a flat vector over the selection; uncovered tensors get grads/λ."""
        lam = self.damping if damping is None else float(damping)
        if lam <= 0:
            raise ValueError("K-FAC inverse needs damping > 0 (its factors are rank-deficient on a small sample)")
        sel = self.selection
        tensors = [t for t in sel.unflatten(grads.to(sel.dtype))]
        out: list[torch.Tensor] = [t.double() / lam for t in tensors]
        for layer in self.layers:
            m = self._to_matrix(layer, tensors)
            proj = layer.qg.t() @ m @ layer.qa
            proj = proj / (scale * self._eigenvalues(layer) + lam)
            self._from_matrix(layer, layer.qg @ proj @ layer.qa.t(), out)
        return sel.flatten(out).to(grads.dtype)

    def curvature_product(self, v: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        """(scale·F)v with the factored F (zero on uncovered tensors): to compare with exact products."""
        sel = self.selection
        tensors = sel.unflatten(v.to(sel.dtype))
        out: list[torch.Tensor] = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
        for layer in self.layers:
            m = self._to_matrix(layer, tensors)
            proj = layer.qg.t() @ m @ layer.qa
            self._from_matrix(layer, scale * layer.qg @ (proj * self._eigenvalues(layer)) @ layer.qa.t(), out)
        return sel.flatten(out).to(v.dtype)

    def preconditioner(self, damping: float | None = None, *, scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
        """r ↦ (scale·F + λI)⁻¹ r, for inverse_hvp(..., preconditioner=...)."""
        return lambda r: self.apply_inverse(r, damping, scale=scale)


def _token_mask(batch: Batch) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    return None if mask is None else mask.bool()


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and x.shape[:-1] == mask.shape:
        return x[mask]
    return x.reshape(-1, x.shape[-1])


def _pass(
    selection: ParameterSelection,
    layers: list[LayerFactors],
    batch: Batch,
    logits_fn: Callable[[Batch], torch.Tensor],
    fisher: str,
    n_samples: int,
    shift_labels: bool,
    gen: torch.Generator,
    *,
    mode: Literal["factors", "ekfac"],
) -> int:
    """One forward, n_samples backward passes; accumulates factors (or EK-FAC eigenvalues). Returns N_loss."""
    mask = _token_mask(batch)
    calls: list[tuple[LayerFactors, torch.Tensor, torch.Tensor]] = []  # (layer, input rows, output tensor)

    def hook_for(layer: LayerFactors):
        def hook(module, args, output):
            x = args[0] if args else None
            if x is None or not output.requires_grad:
                return
            calls.append((layer, layer.activations(_rows(x.detach(), mask).double()), output))

        return hook

    handles = [layer.module.register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        with selection.requires_grad_only():
            logits = logits_fn(batch)
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise ValueError("no selected layer ran in the forward pass")

    labels = batch.get("labels", batch.get("input_ids"))
    if labels is None:
        raise ValueError("K-FAC batches need labels or input_ids")
    if mask is not None and labels.shape == mask.shape:
        labels = labels.masked_fill(~mask, -100)
    if shift_labels:
        logits, labels = logits[:, :-1], labels[:, 1:]
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    valid = flat_labels != -100
    n_loss = int(valid.sum())
    if n_loss == 0:
        return 0
    z = flat_logits[valid]
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    outputs = [out for _, _, out in calls]
    draws = n_samples if fisher == "mc" else 1
    probs = torch.softmax(z.detach(), dim=-1).cpu() if fisher == "mc" else None

    if mode == "factors":
        for layer, a, _ in calls:
            layer.a_sum += a.t() @ a
            layer.n_rows += a.shape[0]
    for s in range(draws):
        if fisher == "mc":
            targets = torch.multinomial(probs.double(), 1, generator=gen).squeeze(1).to(z.device)
        else:
            targets = flat_labels[valid]
        loss = F.cross_entropy(z, targets, reduction="sum")
        grads = torch.autograd.grad(loss, outputs, retain_graph=s < draws - 1, allow_unused=True)
        for (layer, a, _), g in zip(calls, grads):
            if g is None:
                continue
            g = _rows(g.detach(), mask).double()
            if mode == "factors":
                layer.g_sum += (g.t() @ g) / draws
            else:
                pg = (g @ layer.qg) ** 2
                pa = (a @ layer.qa) ** 2
                layer.ekfac += (pg.t() @ pa) / draws
    return n_loss
