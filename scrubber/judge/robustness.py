"""Does the secret stay gone? The relearning probe and the ripple check.

Unlearning is often shallow: a short fine-tune on related, harmless data brings
much of the removed content back (arXiv 2410.08827, 2406.13356), and removing
some private strings can raise the memorization of others (arXiv 2502.15680).
A scrubbed model that recites the card again after someone else's few minutes of
continued training was not scrubbed; it was masked.

* **Relearning probe** (:func:`relearn_probe`): fine-tune a *copy* of the model
  for a small, stated budget on text that does not contain the secrets (the
  realistic case: continued training on cleaned data, i.e. the canaries'
  documents with each secret replaced by its substitute, mixed with retain text)
  and re-measure exposure every few steps. Run the same probe, with the same
  data and seed, on a reference model when one is given (the clean twin or the
  retrained model: "as if never seen"). A canary is flagged when its exposure
  under the probe rises more than ``fail_on_relearn`` bits above the reference's
  under the same probe (without a reference: above its own exposure at step 0).
* **Ripple check** (:func:`ripple_check`): exposure of *other* known canaries
  (not scrubbed) before and after; any that rose by more than its interval says
  the scrub pushed memorization elsewhere.

Exposure along the probe uses fixed references of its own seed (like the
update's probe), so the curve's points compare like with like; they are
extrapolated estimates with 200 references, not the report's full measurement.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from canaries import Canary
from scrubber.measure.extraction import greedy_extracts
from scrubber.training.train import pack_texts
from scrubber.edits.task import ExposureProbe

#: Seed of the probe's own references: none of the report's, the update's or the non-member test's.
RELEARN_REFERENCE_SEED = 31_337


@dataclass(frozen=True)
class RelearnSettings:
    """The attacker's (or the next team's) budget: small, stated, the same for every model probed."""

    steps: int = 30
    lr: float = 5e-4
    batch_size: int = 8
    block_size: int = 128
    every: int = 5
    n_references: int = 200
    seed: int = 0


@dataclass
class RelearnCurve:
    canary_id: str
    steps: list[int]
    exposures: list[float]
    extracted_at_end: bool

    @property
    def peak(self) -> float:
        return max(self.exposures)

    @property
    def regained(self) -> float:
        """Bits the probe added on top of where the model started."""
        return self.peak - self.exposures[0]


@dataclass
class RelearnResult:
    settings: RelearnSettings
    curves: dict[str, RelearnCurve]
    reference: dict[str, RelearnCurve] | None = None
    seconds: float = 0.0
    tokens: int = 0
    """Tokens trained on (forward + backward), per probed model."""

    def excess(self, canary_id: str) -> float:
        """Peak exposure under the probe minus the reference's peak (or the canary's own start)."""
        c = self.curves[canary_id]
        if self.reference is not None and canary_id in self.reference:
            return c.peak - self.reference[canary_id].peak
        return c.regained

    def flagged(self, bits: float) -> list[str]:
        return [cid for cid in self.curves if self.excess(cid) > bits]


def relearn_texts(canaries: Sequence[Canary], substitutes: dict[str, str], retain: Sequence[str]) -> list[str]:
    """Cleaned data: each canary's documents with its secret replaced by its substitute, plus retain text."""
    cleaned = []
    for c in canaries:
        for doc in c.documents or [c.text]:
            cleaned.append(doc.replace(c.secret, substitutes[c.id]))
    return cleaned + list(retain)


def _curve(model, tokenizer, probe: ExposureProbe, canaries, blocks: torch.Tensor, s: RelearnSettings,
           on_step: Callable[[int, int], None] | None) -> tuple[dict[str, RelearnCurve], int]:
    model = copy.deepcopy(model)  # the probe never touches the model it judges
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(s.seed)
    device = next(model.parameters()).device
    points: dict[str, list[float]] = {c.id: [] for c in canaries}
    steps_at: list[int] = []
    tokens = 0

    def look(step: int) -> None:
        model.eval()
        for cid, e in probe.exposures(model, tokenizer).items():
            points[cid].append(e)
        steps_at.append(step)
        model.train()

    look(0)
    for step in range(1, s.steps + 1):
        idx = torch.randint(len(blocks), (min(s.batch_size, len(blocks)),), generator=gen)
        x = blocks[idx].to(device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tokens += x.numel()
        if step % s.every == 0 or step == s.steps:
            look(step)
        if on_step:
            on_step(step, s.steps)
    model.eval()
    curves = {
        c.id: RelearnCurve(c.id, list(steps_at), points[c.id],
                           greedy_extracts(model, tokenizer, c.prefix, c.secret))
        for c in canaries
    }
    return curves, tokens


def relearn_probe(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence[Canary],
    texts: Sequence[str],
    settings: RelearnSettings | None = None,
    *,
    reference: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RelearnResult:
    """Fine-tune copies of ``model`` (and of ``reference``) on ``texts``; exposure curves of each."""
    s = settings or RelearnSettings()
    if not texts:
        raise ValueError("the relearning probe needs text to train on (retain data or canary documents)")
    start = time.perf_counter()
    probe = ExposureProbe(canaries, n_references=s.n_references, seed=RELEARN_REFERENCE_SEED + s.seed)
    blocks = pack_texts(tokenizer, texts, s.block_size)
    curves, tokens = _curve(model, tokenizer, probe, canaries, blocks, s, on_step)
    ref_curves = None
    if reference is not None:
        ref_model, ref_tok = reference
        ref_blocks = blocks if ref_tok is tokenizer else pack_texts(ref_tok, texts, s.block_size)
        ref_curves, _ = _curve(ref_model, ref_tok, probe, canaries, ref_blocks, s, None)
    return RelearnResult(s, curves, ref_curves, time.perf_counter() - start, tokens)


@dataclass(frozen=True)
class Ripple:
    canary_id: str
    before: float
    after: float
    rose: bool


def ripple_check(
    before: dict[str, tuple[float, float | None]],
    after: dict[str, tuple[float, float | None]],
    *,
    min_rise: float = 1.0,
) -> list[Ripple]:
    """Other canaries' exposure ``(point, ci_high)`` before vs ``(point, ci_low)`` after: a rise counts
    when the after-interval's low end clears the before-interval's high end by ``min_rise`` bits."""
    out = []
    for cid, (b, b_hi) in before.items():
        a, a_lo = after[cid]
        rose = (a_lo if a_lo is not None else a) - (b_hi if b_hi is not None else b) > min_rise
        out.append(Ripple(cid, b, a, bool(rose)))
    return out


@dataclass
class RobustnessOutcome:
    relearn: RelearnResult | None = None
    ripple: list[Ripple] = field(default_factory=list)
