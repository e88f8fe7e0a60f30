"""What every update method receives and returns.

Methods are plain functions ``(UpdateTask, UpdateSettings) -> UpdateResult`` in
one module each; the task owns the data and the model, the method owns only
its own loop (the kronfluence/peft split: a small task object, one module per
method behind one interface).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from canaries import Canary
from scrubber.measure.exposure import metrics
from scrubber.measure.exposure.engine import references_for
from scrubber.measure.exposure.scoring import score_candidates
from scrubber.edits.objective import (
    EditPair,
    LossSpan,
    original_nll,
    retain_loss,
    substitute_nll,
)
from scrubber.edits.params import ParameterSelection


TAIL_RANK = 4
"""A secret whose probe rank is at most this (beaten by fewer than 4 of 64 references, over
4 bits) is in the tail, where exposure needs the fitted extrapolation."""


@dataclass
class ExposureProbe:
    """Cheap exposure estimates during an update: a few fixed references per canary.

    The final report re-measures with the full engine; this only steers step
    sizes and stopping, so 64 references are enough: their rank where the secret
    is among them, a skew-normal fit where it is beyond them.
    """

    canaries: Sequence[Canary]
    n_references: int = 64
    seed: int = 1234
    references: dict[str, list[str]] = field(default_factory=dict, init=False)
    """The fixed references it steers by, per canary: kept out of every later measurement."""

    def __post_init__(self) -> None:
        self.references = {c.id: references_for(c, self.n_references, self.seed) for c in self.canaries}

    def exposures(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  ids: Collection[str] | None = None) -> dict[str, float]:
        """Probe exposure of every canary, or only of those in ``ids``."""
        out: dict[str, float] = {}
        for c in self.canaries:
            if ids is not None and c.id not in ids:
                continue
            scores = score_candidates(model, tokenizer, c.prefix, [c.secret, *self.references[c.id]])
            if metrics.interpolated_rank(scores[0], scores[1:]) > TAIL_RANK:
                # inside the references' range the rank is the answer; the skew-normal fit (a
                # Nelder-Mead per canary, 28% of a probe's time on the demo) is for the tail only
                e = float(metrics.exposure_interpolated(scores[0], scores[1:]))
            else:
                e = float(metrics.exposure_extrapolated(scores[0], scores[1:]))
            out[c.id] = min(e, c.fmt.log2_size)
        return out


PAIR_CHUNK = 64
"""Edit pairs per forward/backward. One padded batch of every pair grew faster than its work:
512 pairs cost 33.7 CPU s and 9.4 GiB (half of it kernel time, page faults), length-sorted
chunks of 64 gave the same gradient in 12.0 s and 2.0 GiB (docs/scaling.md)."""


def pair_chunks(pairs: Sequence[EditPair], size: int | None = None) -> list[list[EditPair]]:
    """``pairs`` sorted by length and cut into chunks of ``size`` (default PAIR_CHUNK): little
    padding, bounded memory."""
    size = size or PAIR_CHUNK
    ordered = sorted(pairs, key=lambda p: max(len(p.original), len(p.substitute)))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


@dataclass
class UpdateTask:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    canaries: Sequence[Canary]
    pairs: Sequence[EditPair]
    selection: ParameterSelection
    retain_blocks: torch.Tensor | None = None
    """Packed token blocks of training-like text: the correction term and curvature."""
    tune_blocks: torch.Tensor | None = None
    """Packed blocks that only *decide* (the utility bound, automatic step sizes): kept apart
    from ``retain_blocks`` so the bound is not measured on text the update trains on.
    None falls back to ``retain_blocks`` (library callers that pass one set)."""
    loss_span: LossSpan = "secret"
    probe: ExposureProbe | None = None
    progress: Callable[[int, int], None] | None = None
    log: Callable[[str], None] | None = None
    """Where a method reports what it decided (a probe's result, a step undone): one line each,
    so a long update in a non-terminal log shows why it is still going."""

    # -- the quantities methods combine ----------------------------------
    def forget_loss(self, pairs: Sequence[EditPair] | None = None) -> torch.Tensor:
        """Σ ℓ(z̃) − Σ ℓ(z) over ``pairs`` (default all): descending it replaces each secret
        by its substitute."""
        pairs = self.pairs if pairs is None else pairs
        return (
            substitute_nll(self.model, self.tokenizer, pairs, self.loss_span).sum()
            - original_nll(self.model, self.tokenizer, pairs, self.loss_span).sum()
        )

    def corrected_loss(self, pairs: Sequence[EditPair] | None = None) -> torch.Tensor:
        """Σ ℓ(z̃): the loss on the corrected data D′ restricted to the edited texts."""
        pairs = self.pairs if pairs is None else pairs
        return substitute_nll(self.model, self.tokenizer, pairs, self.loss_span).sum()

    def retain_loss(self, n_blocks: int | None = None) -> torch.Tensor:
        if self.retain_blocks is None:
            raise ValueError("this method needs retain data (--retain-data or --eval-data)")
        blocks = self.retain_blocks if n_blocks is None else self.retain_blocks[:n_blocks]
        return retain_loss(self.model, blocks)

    def _chunked_gradient(self, loss_fn: Callable[[Sequence[EditPair]], torch.Tensor],
                          pairs: Sequence[EditPair] | None) -> torch.Tensor:
        """Σ over :func:`pair_chunks` of ∇loss_fn(chunk): the gradient of the sum, in bounded memory."""
        pairs = self.pairs if pairs is None else pairs
        total = None
        with self.selection.requires_grad_only():
            for chunk in pair_chunks(pairs):
                g = self.selection.gradient(loss_fn(chunk))
                total = g if total is None else total.add_(g)
        return total if total is not None else torch.zeros(self.selection.numel, dtype=self.selection.dtype, device=self.selection.device)

    def forget_gradient(self, pairs: Sequence[EditPair] | None = None) -> torch.Tensor:
        """∇ of :meth:`forget_loss` over ``pairs`` (default all), chunk by chunk."""
        return self._chunked_gradient(self.forget_loss, pairs)

    def gradient_residual(self) -> float:
        """‖∇θ L(θ; D′)‖ on the edited texts at the current weights, chunk by chunk
        (:func:`scrubber.edits.residual.gradient_residual` for a loss that fits one batch)."""
        return float(self._chunked_gradient(self.corrected_loss, None).double().norm())

    def retain_gradient(self, n_blocks: int | None = None) -> torch.Tensor:
        with self.selection.requires_grad_only():
            return self.selection.gradient(self.retain_loss(n_blocks))

    @torch.no_grad()
    def retain_value(self, n_blocks: int = 16) -> float:
        """Mean token loss on the tune blocks (else the retain blocks): what bounds are checked on."""
        blocks = self.tune_blocks if self.tune_blocks is not None else self.retain_blocks
        if blocks is None:
            return float("nan")
        return float(retain_loss(self.model, blocks[:n_blocks]))

    def exposures(self, ids: Collection[str] | None = None) -> dict[str, float]:
        """Probe exposures (all canaries, or those in ``ids``); {} without a probe."""
        if self.probe is None:
            return {}
        return self.probe.exposures(self.model, self.tokenizer, ids)


@dataclass
class UpdateSettings:
    tau: float | None = None
    """first-order, iau, second-order: the multiplier of the method's direction (θ ← θ + τ·d);
    None chooses it on the probe."""
    step_size: float | None = None
    """iterative: each step's norm relative to the selected weights' scale; None = DEFAULT_STEP."""
    damping: float | None = None
    target_exposure: float = 3.0
    probe_margin: float = 1.0
    """Bits below the target that the probe aims at. The probe steers by 64 fixed references;
    the report re-measures with other, independent ones, and an update that stopped exactly
    at the target on its probe measured 3.26 bits against a 3-bit target there."""
    max_retain_increase: float = 0.02
    max_steps: int = 60
    retain_weight: float = 100.0
    solver: str = "cg"
    """second-order: how (c·C + λI)⁻¹g is solved: "cg", "lissa", or "kfac" (EK-FAC factors fitted
    once on the retain text, reused by every Newton step)."""
    curvature: str = "ggn"
    """second-order with cg/lissa: "ggn" (Gauss-Newton, PSD) or "hessian" (indefinite on LMs)."""
    newton_steps: int = 3
    """second-order: re-linearised Newton steps at most (g and, for cg/lissa, the curvature
    recomputed at the current weights; each step's length chosen on the probe)."""
    train_tokens: int | None = None
    """Tokens in the training set: the mean-loss curvature is scaled by it, so that the step
    with multiplier 1 is the paper's Newton step. None: the retain sample's token count."""
    l2: float | None = None
    """certified-head: strength μ of the L2 term (μ/2)‖W − W₀‖² (the strong convexity the residual
    bound divides by). None: 1e-3 of the top curvature eigenvalue of the head objective."""

    @property
    def aim(self) -> float:
        """The exposure the probe must show before a canary counts as done."""
        return max(0.0, self.target_exposure - self.probe_margin)


@dataclass
class UpdateResult:
    method: str
    seconds: float
    tau: float | None = None
    damping: float | None = None
    steps: int = 1
    gradient_residual: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def reference_norm(selection: ParameterSelection) -> float:
    """The scale step sizes are relative to: the model's RMS weight times sqrt(#selected).

    Equals ‖θ‖ when everything is selected; for a fresh LoRA adapter (B = 0,
    small A) the selection's own norm is near zero and would make every step vanish.
    """
    total, count = 0.0, 0
    for p in selection.model.parameters():
        total += float(p.detach().double().pow(2).sum())
        count += p.numel()
    return (total / max(count, 1)) ** 0.5 * selection.numel ** 0.5


def relative_rise(before: float, after: float) -> float:
    """Relative perplexity rise implied by two mean token losses (nats): exp(Δ) − 1."""
    if not (math.isfinite(before) and math.isfinite(after)):
        return 0.0 if not math.isfinite(before) else math.inf
    return math.expm1(after - before)


def worst(exposures: dict[str, float]) -> float:
    return max(exposures.values()) if exposures else -np.inf
