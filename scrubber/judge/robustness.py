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
  the scrub pushed memorization elsewhere. Secrets nobody listed are caught by a
  short discovery scan before and after (:func:`discovery_snapshot`,
  :func:`discovery_ripple`): a new memorized finding, or one whose exposure rose.

Exposure along the probe uses fixed references of its own seed (like the
update's probe), so the curve's points compare like with like; they are
extrapolated estimates with 200 references, not the report's full measurement.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from canaries import Canary
from scrubber.measure.extraction import greedy_extracts
from scrubber.training.train import pack_texts
from scrubber.edits.task import ExposureProbe

if TYPE_CHECKING:
    from scrubber.report.schema import FindingReport

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

    def summary(self) -> "RelearnSummary":
        """Max/mean over canaries of what the probe brought back, here and in the reference."""
        regained = [c.regained for c in self.curves.values()]
        ref = [self.reference[cid].regained for cid in self.curves if cid in self.reference] \
            if self.reference is not None else []
        excess = [self.excess(cid) for cid in self.curves]
        return RelearnSummary(
            regained_max=max(regained), regained_mean=sum(regained) / len(regained),
            reference_regained_max=max(ref) if ref else None,
            reference_regained_mean=sum(ref) / len(ref) if ref else None,
            excess_max=max(excess), peak_max=max(c.peak for c in self.curves.values()),
            extracted_at_end=[cid for cid, c in self.curves.items() if c.extracted_at_end],
        )


@dataclass(frozen=True)
class RelearnSummary:
    """One benchmark row's relearning column: bits regained (peak under the probe − start), max and
    mean over canaries, next to the reference's under the same probe; excess = peak − reference peak."""

    regained_max: float
    regained_mean: float
    reference_regained_max: float | None
    reference_regained_mean: float | None
    excess_max: float
    peak_max: float
    extracted_at_end: list[str]


def relearn_texts(canaries: Sequence[Canary], substitutes: dict[str, str], retain: Sequence[str]) -> list[str]:
    """Cleaned data: each canary's documents with its secret replaced by its substitute, plus retain text."""
    cleaned = []
    for c in canaries:
        for doc in c.documents or [c.text]:
            cleaned.append(doc.replace(c.secret, substitutes[c.id]))
    return cleaned + list(retain)


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy whose every weight trains: a LoRA adapter merged into its base first.

    Whoever continues training a released model fine-tunes all of it, not just the weights a scrub
    happened to select; and the reference (a plain checkpoint) trains all of its weights too, so
    the probe must do the same on both sides for "regained" to compare like with like.
    """
    model = copy.deepcopy(model)
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _curve(model, tokenizer, probe: ExposureProbe, canaries, blocks: torch.Tensor, s: RelearnSettings,
           on_step: Callable[[int, int], None] | None) -> tuple[dict[str, RelearnCurve], int]:
    model = plain_copy(model)  # the probe never touches the model it judges
    model.train()
    params = list(model.parameters())
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


# ----------------------------------------------------------------------------- ripple: discovery


#: A short discovery scan (seconds on a small model, a few minutes on a 135M one on CPU): the
#: default baits, few samples each, candidates screened on 64 references and measured on 200.
RIPPLE_DISCOVERY_BUDGET: dict = {
    "samples_per_bait": 4, "unconditional_samples": 8, "unconditional_tokens": 64, "max_new_tokens": 24,
    "branch_top": 2, "max_candidates": 40, "screen_references": 64, "n_references": 200,
    "exposure_method": "extrapolated", "anchor_contexts": 32, "anchor_top": 16,
}


def ripple_scan_config(seed: int = 0, **overrides):
    """The ripple check's discovery budget as a :class:`DiscoverScanConfig` (``overrides`` win)."""
    from scrubber.discovery.config import DiscoverScanConfig

    return DiscoverScanConfig(**{**RIPPLE_DISCOVERY_BUDGET, "seed": seed, **overrides})


@dataclass
class DiscoverySnapshot:
    """What one discovery scan found, keyed by the raw value (held in memory only, never written)."""

    findings: dict[str, "FindingReport"] = field(repr=False)
    n_samples: int = 0
    seconds: float = 0.0


def discovery_snapshot(loaded, cfg=None, progress=None) -> DiscoverySnapshot:
    """A short discovery scan of ``loaded`` (``cfg``: :func:`ripple_scan_config` when None) through the
    discovery package's public :func:`run_discovery`; a value found in several contexts keeps its
    highest exposure."""
    from scrubber.discovery.scan import run_discovery

    t0 = time.perf_counter()
    res = run_discovery(loaded, cfg if cfg is not None else ripple_scan_config(), progress)
    found: dict[str, FindingReport] = {}
    for f, j in zip(res.findings, res.judgements):
        value = j.candidate.value
        if value not in found or f.exposure.exposure > found[value].exposure.exposure:
            found[value] = f
    return DiscoverySnapshot(found, res.n_samples, time.perf_counter() - t0)


@dataclass(frozen=True)
class DiscoveryRipple:
    """One value the scrubbed model's scan turned up that is worse than before."""

    finding_id: str
    format: str
    value: str
    """Masked (as the finding in the scrubbed model's scan has it)."""
    before: float | None
    """Exposure in the before-scan, bits; None: the before-scan did not find the value."""
    after: float
    new: bool
    """Memorized after the scrub, not a memorized finding before."""
    rose: bool
    """Found by both scans and the after-interval's low end clears the before-interval's high end."""


@dataclass
class DiscoveryRippleResult:
    rows: list[DiscoveryRipple]
    findings_before: int
    findings_after: int
    excluded: int
    """Values of the scrubbed model's scan left out as expected: the scrubbed secrets and their substitutes."""
    samples_before: int = 0
    samples_after: int = 0
    seconds: float = 0.0


def discovery_ripple(before: DiscoverySnapshot, after: DiscoverySnapshot, *, exclude: Sequence[str] = (),
                     min_rise: float = 1.0) -> DiscoveryRippleResult:
    """Findings of the scrubbed model's scan that are new memorized findings or rose since the before-scan.

    ``exclude``: the scrubbed secrets (the main verdict judges those) and their substitutes (the
    scrub teaches those on purpose). A value the before-scan did not sample counts as new only when
    memorized after: sampling is random, so "not found before" alone is no rise.
    """
    skip = set(exclude)
    rows, excluded = [], 0
    for value, a in after.findings.items():
        if value in skip:
            excluded += 1
            continue
        b = before.findings.get(value)
        new = a.memorized and (b is None or not b.memorized)
        rose = False
        if b is not None:
            lo = a.exposure.ci_low if a.exposure.ci_low is not None else a.exposure.exposure
            hi = b.exposure.ci_high if b.exposure.ci_high is not None else b.exposure.exposure
            rose = lo - hi > min_rise
        if new or rose:
            rows.append(DiscoveryRipple(a.id, a.format, a.value, None if b is None else b.exposure.exposure,
                                        a.exposure.exposure, new, rose))
    rows.sort(key=lambda r: -r.after)
    return DiscoveryRippleResult(rows, len(before.findings), len(after.findings), excluded,
                                 before.n_samples, after.n_samples, before.seconds + after.seconds)


def ripple_discovery_section(result: DiscoveryRippleResult, budget: str | None = None):
    """The result as the report's ``robustness.ripple_discovery`` (values already masked)."""
    from scrubber.report.schema import DiscoveryRippleReport, RippleDiscovery

    return RippleDiscovery(
        budget=budget or ", ".join(f"{k} {v}" for k, v in RIPPLE_DISCOVERY_BUDGET.items()),
        samples_before=result.samples_before, samples_after=result.samples_after,
        findings_before=result.findings_before, findings_after=result.findings_after,
        excluded=result.excluded, seconds=result.seconds,
        rows=[DiscoveryRippleReport(finding_id=r.finding_id, format=r.format, value=r.value, before=r.before,
                                    after=r.after, new=r.new, rose=r.rose) for r in result.rows],
    )


def attach_ripple_discovery(robustness, result: DiscoveryRippleResult, budget: str | None = None):
    """``robustness`` (a report section, or None when neither probe nor ripple ran) with the discovery
    ripple set: the one call ``scrub``/``check-scrub`` need after the second scan."""
    from scrubber.report.schema import Robustness

    section = robustness or Robustness(steps=0, lr=0.0, batch_size=0, block_size=0, tokens=0, seconds=0.0,
                                       data="relearning probe not run (--robustness)")
    section.ripple_discovery = ripple_discovery_section(result, budget)
    return section
