"""Did the scrub work? One verdict, decided here, that the summary, every report format
and the exit code all follow.

A release pipeline checks the exit code, not ``scrub.extra`` deep in the JSON: a scrub
that left a secret recitable and exited 0 ships the secret. So a scrub passes only when
every canary ends at or below the target exposure, greedy decoding reproduces none of
them, and the utility bound held; otherwise the CLI exits 1 (the code of a failed gate)
with the scrubbed model still written for inspection, unless ``--allow-partial``.
"""

from __future__ import annotations

from typing import Sequence

from scrubber.report.schema import CanaryReport, Utility, Verdict


def utility_rise(utility: Utility, tune_rise: float | None) -> float | None:
    """Relative rise of held-out perplexity-equivalent loss: from bits per byte when measured
    (tokenizer-independent), else from perplexity, else the method's own tune-part figure."""
    if utility.bits_per_byte_change_pct is not None:
        return utility.bits_per_byte_change_pct / 100.0
    if utility.perplexity_change_pct is not None:
        return utility.perplexity_change_pct / 100.0
    return tune_rise


def scrub_verdict(
    canaries: Sequence[CanaryReport],
    utility: Utility,
    *,
    target_exposure: float,
    utility_bound: float,
    tune_rise: float | None = None,
    allow_partial: bool = False,
    relearned: Sequence[str] = (),
) -> Verdict:
    above = [c.id for c in canaries if c.after is not None and c.after.exposure > target_exposure]
    extracted = [c.id for c in canaries if c.after is not None and c.after.extracted]
    outside = [c.id for c in canaries if c.nonmember is not None and c.nonmember.verdict != "inside"]
    rise = utility_rise(utility, tune_rise)
    kept = None if rise is None else rise <= utility_bound
    passed = not above and not extracted and kept is not False and not relearned
    if passed:
        summary = (f"PASSED: {len(canaries)} canar{'y' if len(canaries) == 1 else 'ies'} at or below "
                   f"{target_exposure:g} bits, none extracted"
                   + (f", utility {100 * rise:+.2f}% (bound {100 * utility_bound:+.1f}%)" if rise is not None
                      else ", utility not measured (no --eval-data)"))
    else:
        parts = []
        if above:
            parts.append(f"{len(above)} above {target_exposure:g} bits ({', '.join(above)})")
        if extracted:
            parts.append(f"{len(extracted)} still extracted ({', '.join(extracted)})")
        if relearned:
            parts.append(f"{len(relearned)} relearned under the probe ({', '.join(relearned)})")
        if kept is False:
            parts.append(f"utility bound broken ({100 * rise:+.2f}% > {100 * utility_bound:+.1f}%)")
        summary = "FAILED: " + "; ".join(parts)
    if outside:
        summary += f"; non-member test: {len(outside)} outside ({', '.join(outside)})"
    return Verdict(
        passed=passed, target_exposure=target_exposure, above_target=above, extracted=extracted,
        outside_nonmembers=outside, relearned=list(relearned), utility_bound=utility_bound, utility_rise=rise, utility_kept=kept,
        allow_partial=allow_partial, summary=summary,
    )
