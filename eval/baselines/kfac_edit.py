"""K-FAC curvature edit (arXiv 2510.24256): drop the low-curvature weight components, no forget set.

The observation behind it: on clean text, the loss curvature of an MLP
projection is concentrated in a few directions shared by many examples, while
memorized, idiosyncratic sequences lean on directions the clean data barely
curves. Per MLP projection ``s = W a`` the K-FAC factors ``A = E[a aᵀ]``
(inputs) and ``G = E[g gᵀ]`` (output gradients) are fitted on clean text
(``task.retain_blocks``), eigendecomposed ``A = U_A diag(μ) U_Aᵀ``,
``G = U_G diag(λ) U_Gᵀ``, and the weight is written in that basis,
``C = U_Gᵀ W U_A``. Component ``(i, j)`` has curvature ``λ_i μ_j``; the edit keeps
the components holding the top ``keep_mass`` of the total curvature and sets
the rest to zero: ``W ← U_G (C ⊙ M) U_Aᵀ``. It reads neither the canaries nor
their substitutes, so it is the same edit whatever is memorized.

Factors come from :class:`scrubber.edits.kfac.KFAC` (Fisher with labels
sampled from the model: its expectation is the GGN). Biases are left as they are.
"""

from __future__ import annotations

import time

import torch

from scrubber.edits.kfac import KFAC
from scrubber.edits.params import ParameterSelection, select_parameters
from scrubber.edits.task import UpdateResult, UpdateSettings, UpdateTask

KEEP_MASS = 0.9
N_BLOCKS = 64


def mlp_weights(model: torch.nn.Module) -> ParameterSelection:
    """The 2-D weights of every MLP projection (biases excluded)."""
    sel = select_parameters(model, "mlp")
    keep = [(n, p) for n, p in zip(sel.names, sel.params) if p.dim() == 2]
    return ParameterSelection(model, [n for n, _ in keep], [p for _, p in keep])


def keep_mask(curvature: torch.Tensor, keep_mass: float) -> torch.Tensor:
    """Boolean mask of the largest entries of ``curvature`` whose sum reaches ``keep_mass`` of the total."""
    flat = curvature.flatten()
    order = torch.argsort(flat, descending=True)
    cum = torch.cumsum(flat[order], 0)
    total = float(cum[-1])
    n_keep = int(torch.searchsorted(cum, torch.tensor(keep_mass * total, dtype=cum.dtype)).item()) + 1
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[: min(n_keep, flat.numel())]] = True
    return mask.view_as(curvature)


def kfac_edit(
    task: UpdateTask,
    settings: UpdateSettings | None = None,
    *,
    config=None,
    keep_mass: float = KEEP_MASS,
    n_blocks: int = N_BLOCKS,
    batch_size: int = 8,
) -> UpdateResult:
    """Edit every MLP projection of ``task.model`` in place. ``settings``/``config`` unused
    (the one knob, ``keep_mass``, is what the benchmark tunes)."""
    if not 0 < keep_mass <= 1:
        raise ValueError(f"keep_mass must be in (0, 1], got {keep_mass}")
    if task.retain_blocks is None:
        raise ValueError("kfac_edit needs clean text (task.retain_blocks) for its curvature")
    start = time.perf_counter()
    sel = mlp_weights(task.model)
    blocks = task.retain_blocks[:n_blocks]
    batches = [{"input_ids": b, "labels": b} for b in blocks.split(batch_size)]
    with sel.requires_grad_only():
        kfac = KFAC.fit(sel, batches, fisher="mc", seed=0)
    kept, total = 0, 0
    with torch.no_grad():
        for layer in kfac.layers:
            w = layer.module.weight
            canon = (w.t() if layer.conv1d else w).double()  # [out, in]
            coeff = layer.qg.t() @ canon @ layer.qa
            mask = keep_mask(layer.lg[:, None] * layer.la[None, :], keep_mass)
            edited = layer.qg @ (coeff * mask) @ layer.qa.t()
            w.copy_((edited.t() if layer.conv1d else edited).to(w.dtype))
            kept += int(mask.sum())
            total += mask.numel()
    task.model.eval()
    residual = task.gradient_residual()
    return UpdateResult(
        "kfac_edit", time.perf_counter() - start, steps=1, gradient_residual=residual,
        extra={"keep_mass": keep_mass, "components_kept": kept, "components_total": total,
               "layers": [l.name for l in kfac.layers], "curvature_blocks": int(blocks.shape[0])},
    )
