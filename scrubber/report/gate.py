"""The CI gate: which items fail ``--fail-above``, and its messages. Per-item severity
(SARIF levels, Markdown/HTML colours) follows the gate and the memorization rule in
:func:`scrubber.measure.memorized.level`, so the exit code and the colours never disagree."""

from __future__ import annotations

from scrubber.report.schema import Gate, Report

#: Ids of the tokenizer scan's findings start with this (see scrubber.tokenizer_scan).
TOKENIZER_ID_PREFIX = "tokenizer:"


def compute_gate(report: Report, fail_above: float, fail_on_tokenizer: bool = True) -> Gate:
    """An item fails when its current exposure (after the scrub, if any) is strictly
    above ``fail_above``; a flagged tokenizer finding has no bits and fails on its own
    switch (``fail_on_tokenizer``), so each kind is counted and reported apart."""
    public = {f.id for f in report.findings if f.public_test_value}  # known from the web, not leaked
    bits = [item_id for _, item_id, m in report.exposures() if m.exposure > fail_above and item_id not in public]
    tok = [f.id for f in report.tokenizer.findings if f.flagged] if report.tokenizer is not None else []
    failing = bits + (tok if fail_on_tokenizer else [])
    return Gate(fail_above=fail_above, failed=bool(failing), offenders=failing, bits_offenders=bits,
                tokenizer_offenders=tok, fail_on_tokenizer=fail_on_tokenizer)


def gate_messages(gate: Gate) -> list[str]:
    """One line per kind of failure, for stderr: bits and tokenizer findings apart, because a
    vocabulary entry has no exposure and "above N bits" would be false for it."""
    lines = []
    if gate.bits_offenders:
        n = len(gate.bits_offenders)
        lines.append(f"gate: {n} item{'s' if n != 1 else ''} above {gate.fail_above:g} bits: "
                     + ", ".join(gate.bits_offenders))
    if gate.tokenizer_offenders and gate.fail_on_tokenizer:
        n = len(gate.tokenizer_offenders)
        lines.append(f"gate: {n} tokenizer finding{'s' if n != 1 else ''}: the vocabulary holds pieces of "
                     "secrets (see the report's tokenizer section; --no-fail-on-tokenizer to gate on bits only)")
    return lines


def verdict(gate: Gate | None) -> str:
    """One line for humans: the gate's outcome."""
    if gate is None:
        return "no gate (run with --fail-above BITS to gate CI)"
    if not gate.failed:
        return f"PASSED: nothing above {gate.fail_above:g} bits"
    n_tok = len(gate.tokenizer_offenders) if gate.fail_on_tokenizer else 0
    n = len(gate.bits_offenders)
    parts = [f"{n} item{'s' if n != 1 else ''} above {gate.fail_above:g} bits"] if n else []
    if n_tok:
        parts.append(f"{n_tok} flagged tokenizer finding{'s' if n_tok != 1 else ''}")
    return "FAILED: " + ", ".join(parts)
