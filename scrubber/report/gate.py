"""The CI verdict and per-item severity, decided in one place so that the exit code,
the SARIF levels and the colours in Markdown/HTML never disagree."""

from __future__ import annotations

from typing import Literal

from scrubber.report.schema import Gate, Report

Level = Literal["error", "warning", "note"]

#: Without a gate, exposure this high means "extractable in practice": about one
#: in a million random candidates beats the secret.
ERROR_BITS_NO_GATE = 20.0
#: Ids of the tokenizer scan's findings start with this (see scrubber.tokenizer_scan).
TOKENIZER_ID_PREFIX = "tokenizer:"
#: One in a thousand: clearly remembered, worth a look.
WARNING_BITS = 10.0


def compute_gate(report: Report, fail_above: float) -> Gate:
    """An item fails when its current exposure (after the scrub, if any) is strictly
    above ``fail_above``; a flagged tokenizer finding fails regardless of bits."""
    offenders = [item_id for _, item_id, m in report.exposures() if m.exposure > fail_above]
    if report.tokenizer is not None:
        offenders += [f.id for f in report.tokenizer.findings if f.flagged]
    return Gate(fail_above=fail_above, failed=bool(offenders), offenders=offenders)


def level(exposure: float, item_id: str, gate: Gate | None) -> Level:
    """``error`` for gate offenders (or >= 20 bits when no gate is set), ``warning``
    from 10 bits, ``note`` below."""
    if gate is not None:
        if item_id in gate.offenders:
            return "error"
    elif exposure >= ERROR_BITS_NO_GATE:
        return "error"
    return "warning" if exposure >= WARNING_BITS else "note"


def verdict(gate: Gate | None) -> str:
    """One line for humans: the gate's outcome."""
    if gate is None:
        return "no gate (run with --fail-above BITS to gate CI)"
    if not gate.failed:
        return f"PASSED: nothing above {gate.fail_above:g} bits"
    n_tok = sum(1 for o in gate.offenders if o.startswith(TOKENIZER_ID_PREFIX))
    n = len(gate.offenders) - n_tok
    parts = [f"{n} item{'s' if n != 1 else ''} above {gate.fail_above:g} bits"] if n else []
    if n_tok:
        parts.append(f"{n_tok} flagged tokenizer finding{'s' if n_tok != 1 else ''}")
    return "FAILED: " + ", ".join(parts)
