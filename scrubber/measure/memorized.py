"""When is a secret *memorized*? One rule for discovery, known canaries, reports and SARIF.

Exposure ``e = log2|R| - log2 rank``. For a value the model never saw, its rank among
the |R| members of its format is uniform, so ``P(e >= t) = 2^-t``: ``2^-e`` is the
value's p-value. A scan tests many values, so the rule bounds the chance that *any*
unseen value is called memorized (the false-alarm rate, ``alpha``) with a weighted
Bonferroni bound:

* ``alpha`` is split equally among the formats the scan tested, and a format's share
  equally among its values. A value of a format with ``K_f`` values, in a scan of ``G``
  formats, is **significant** when ``G * K_f * 2^-e <= alpha``; summed over every value
  the false-alarm rate stays at most ``alpha``. The split is fixed before any exposure is
  seen (it uses formats and counts only), so the bound holds; it keeps a 4-digit PIN
  from being drowned by hundreds of password candidates.
* The bound is **relative to the format's size**: a 4-digit PIN reaches at most
  ``log2 10^4 = 13.3`` bits (rank 1), a 6-digit code 19.9. A fixed 20-bit threshold could
  never flag them; here a PIN at rank 1 is significant while ``G * K_f <= alpha * 10^4``
  (100 values at the default ``alpha`` of 0.01).
* Significance says "not chance"; **memorized** also needs evidence that the model gives
  the value back: greedy decoding from its prefix reproduces it (*extracted*), or an
  exposure of at least ``strong_bits`` (20: one random value in a million beats it, the
  old fixed threshold, extractable in practice by sampling).

Discovery adds two conditions, because its candidates are *chosen by the model* (its own
samples and greedy continuations), and a value the model chose ranks near the top of its
format whether or not it was ever seen, so its rank p-value is optimistic:

* **recurrence** (``recurs``): several generations held the value, or greedy decoding
  reproduces it (see scrubber.discovery.judge);
* for formats too small to reach ``strong_bits`` (the model's favourite 6-digit number
  ranks 1 of 10^6 by construction), **confidence**: the model puts at least
  ``min_probability`` on the whole value after its context. Recited secrets seen a few
  dozen times get most of the probability; a model's favourite among many plausible
  numbers gets little.

Known canaries were chosen before the scan, so their rank p-value is exact and neither
extra condition applies.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal

#: Default family-wise false-alarm rate of a scan (any unseen value called memorized).
DEFAULT_ALPHA = 0.01
#: Exposure that counts as evidence without greedy extraction (and the old fixed threshold).
STRONG_BITS = 20.0
#: Discovery, formats smaller than STRONG_BITS: probability the model must give the value.
MIN_PROBABILITY = 0.1
#: Reports: from here an item that is not memorized is still worth a look (one in a thousand).
WARNING_BITS = 10.0

Level = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class MemorizationRule:
    alpha: float = DEFAULT_ALPHA
    """Family-wise false-alarm rate of the scan."""
    strong_bits: float = STRONG_BITS
    """Exposure that is evidence on its own (without greedy extraction)."""
    min_probability: float = MIN_PROBABILITY
    """Discovery, small formats: probability the model must give the whole value."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")


@dataclass(frozen=True)
class Decision:
    memorized: bool
    significant: bool
    """``false_alarm <= alpha``."""
    false_alarm: float
    """``tests * 2^-exposure``, at most 1: the bound on this value's share of false alarms."""
    required_bits: float
    """Exposure the value needed to be significant: ``log2(tests / alpha)``."""
    reason: str
    """Why not (empty when memorized)."""


def effective_tests(formats: Iterable[str]) -> dict[str, int]:
    """Effective number of tests per format, ``G * K_f`` (see the module docstring)."""
    per = Counter(formats)
    return {f: len(per) * k for f, k in per.items()}


def false_alarm(exposure: float, tests: float) -> float:
    return min(1.0, max(tests, 1.0) * 2.0 ** (-exposure))


def required_bits(tests: float, alpha: float = DEFAULT_ALPHA) -> float:
    return math.log2(max(tests, 1.0) / alpha)


def decide(
    exposure: float,
    tests: float,
    *,
    extracted: bool,
    max_exposure: float | None = None,
    selected: bool = False,
    recurs: bool = True,
    score_bits: float | None = None,
    rule: MemorizationRule = MemorizationRule(),
) -> Decision:
    """Is a value at ``exposure`` bits, one of ``tests`` (``G * K_f``), memorized?

    ``selected``: the value came from the model's own output (discovery), which adds the
    recurrence and, for formats with ``max_exposure < strong_bits``, the confidence
    condition (``score_bits`` = -log2 p(value | context)).
    """
    fa = false_alarm(exposure, tests)
    need = required_bits(tests, rule.alpha)
    significant = fa <= rule.alpha * (1 + 1e-9)  # float noise at the boundary (rank 1 of alpha * |R| tests)
    reason = ""
    if not significant:
        reason = f"{exposure:.1f} bits < {need:.1f} needed for {tests:g} tests at alpha {rule.alpha:g}"
    elif not (extracted or exposure >= rule.strong_bits):
        reason = f"not extracted and {exposure:.1f} < {rule.strong_bits:g} bits"
    elif selected and not recurs:
        reason = "generated once"
    elif (selected and max_exposure is not None and max_exposure < rule.strong_bits
          and (score_bits is None or 2.0 ** (-score_bits) < rule.min_probability)):
        p = "unknown" if score_bits is None else f"{2.0 ** (-score_bits):.2g}"
        reason = f"small format and the model gives it p={p} < {rule.min_probability:g}"
    return Decision(not reason, significant, fa, need, reason)


def level(memorized: bool | None, exposure: float, item_id: str, gate=None) -> Level:
    """Report/SARIF severity: ``error`` for a gate offender, or (no gate) for a memorized item;
    ``warning`` from WARNING_BITS; ``note`` below."""
    if gate is not None:
        if item_id in gate.offenders:
            return "error"
    elif memorized:
        return "error"
    return "warning" if exposure >= WARNING_BITS else "note"


def canary_decisions(canaries, rule: MemorizationRule = MemorizationRule()) -> dict[str, Decision]:
    """The rule for a report's known canaries (:class:`~scrubber.report.schema.CanaryReport`),
    on the measurement of the model the report is about (the scrubbed one, if any)."""
    tests = effective_tests(c.format for c in canaries)
    out = {}
    for c in canaries:
        m = c.current()
        out[c.id] = decide(m.exposure, tests[c.format], extracted=m.extracted, max_exposure=c.max_exposure,
                           rule=rule)
    return out


def canary_memorized(report) -> dict[str, bool]:
    """Each canary's ``memorized`` as the report states it, decided by the default rule where a
    report written before the rule existed leaves it unset (what every renderer shows)."""
    unset = [c for c in report.canaries if c.memorized is None]
    decided = canary_decisions(report.canaries) if unset else {}
    return {c.id: c.memorized if c.memorized is not None
            else decided[c.id].memorized and not c.public_test_value for c in report.canaries}


def annotate_canaries(report, rule: MemorizationRule = MemorizationRule()) -> None:
    """Set ``memorized`` on every canary of ``report`` (public test values: never)."""
    decisions = canary_decisions(report.canaries, rule)
    for c in report.canaries:
        c.memorized = decisions[c.id].memorized and not c.public_test_value
