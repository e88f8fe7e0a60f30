"""Number and measurement formatting shared by the human-readable writers, so the
Markdown comment and the HTML page print the same figures the same way."""

from __future__ import annotations

from scrubber.report.schema import Measurement, Report, ScrubInfo, TokenizerFinding, TokenizerSection, Utility


def num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def exposure(m: Measurement | None) -> str:
    """``33.1 (30.2–35.9)``, with ``≥`` when capped at log2|R|."""
    if m is None:
        return "–"
    s = ("≥" if m.capped else "") + num(m.exposure)
    if m.ci_low is not None and m.ci_high is not None:
        s += f" ({num(m.ci_low)}–{num(m.ci_high)})"
    return s


def yes_no(b: bool | None) -> str:
    return "–" if b is None else ("yes" if b else "no")


def count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _before_after(name: str, before: float, after: float | None, pct: float | None, digits: int) -> str:
    s = f"{name} {num(before, digits)}"
    if after is not None:
        s += f" → {num(after, digits)}" + (f" ({pct:+.2f}%)" if pct is not None else "")
    return s


def utility_line(u: Utility) -> str:
    if u.perplexity_before is None and u.bits_per_byte_before is None:
        return "Held-out utility: not measured (no eval data)."
    parts = [
        _before_after(name, before, after, pct, digits)
        for name, before, after, pct, digits in (
            ("bits per byte", u.bits_per_byte_before, u.bits_per_byte_after, u.bits_per_byte_change_pct, 4),
            ("token perplexity", u.perplexity_before, u.perplexity_after, u.perplexity_change_pct, 2),
        )
        if before is not None
    ]
    where = []
    if u.eval_documents is not None:
        where.append(f"{u.eval_documents:,} documents")
    if u.eval_tokens is not None:
        where.append(f"{u.eval_tokens:,} tokens")
    return "Held-out " + "; ".join(parts) + (f" on {', '.join(where)}" if where else "") + "."


def data_roles_line(r: Report) -> str | None:
    if r.data_roles is None:
        return None
    return f"Data roles: {r.data_roles.rule}."


def robustness_lines(r: Report) -> list[str]:
    """One line per canary: what the relearning probe brought back."""
    rb = r.robustness
    if rb is None:
        return []
    head = (f"Relearning probe: {rb.steps} AdamW steps at lr {rb.lr:g} on {rb.data} "
            f"({rb.tokens:,} tokens, {rb.seconds:.1f} s)"
            + (f"; reference {rb.reference_model}" if rb.reference_model else "; no reference model")
            + (f"; fails above {rb.fail_on_relearn:g} bits" if rb.fail_on_relearn is not None else "") + ".")
    lines = [head] if rb.steps else ["Relearning probe: not run."]
    for c in rb.curves:
        ref = f", reference peak {max(c.reference_exposures):.1f}" if c.reference_exposures else ""
        lines.append(f"{c.canary_id}: {c.exposures[0]:.1f} → peak {max(c.exposures):.1f} bits{ref}; "
                     f"excess {c.excess:+.1f} bits; extracted after probe: {yes_no(c.extracted_at_end)}"
                     + ("; FLAGGED" if c.flagged else ""))
    for x in rb.ripple:
        lines.append(f"other canary {x.canary_id}: {x.before:.1f} → {x.after:.1f} bits"
                     + ("; ROSE (the scrub pushed memorization here)" if x.rose else ""))
    return lines


def verdict_line(r: Report) -> str | None:
    """The scrub's verdict, the first thing every summary says."""
    if r.verdict is None:
        return None
    tail = " (--allow-partial: exit 0)" if r.verdict.allow_partial and not r.verdict.passed else ""
    return f"Scrub verdict: {r.verdict.summary}{tail}"


def scrub_line(s: ScrubInfo) -> str:
    parts = [f"{s.method} on {s.params_selected} ({s.n_parameters_updated:,} parameters)"]
    if s.tau is not None:
        parts.append(f"τ={s.tau:g}")
    if s.damping is not None:
        parts.append(f"λ={s.damping:g}")
    parts.append(f"substitutes: {s.substitute_strategy}")
    parts.append(f"{s.seconds:.2f} s")
    if s.gradient_residual is not None:
        parts.append(f"gradient residual {s.gradient_residual:.3g}")
    return "Scrub: " + ", ".join(parts) + "."


def model_line(r: Report) -> str:
    m = r.model
    bits = [m.architecture or "unknown architecture"]
    if m.n_parameters is not None:
        bits.append(f"{m.n_parameters:,} parameters")
    if m.source_format == "gguf":
        bits.append(f"read from GGUF{' (dequantized from ' + m.dequantized_from + ')' if m.dequantized_from else ''}")
    if m.dtype != "float32":
        bits.append(m.dtype)
    return ", ".join(bits)


# -- tokenizer section ------------------------------------------------------------


def tokenizer_line(t: TokenizerSection) -> str:
    """``byte_level BPE, 2,048 entries, 1,790 merges: 7 of 19 findings flagged (38 entries).``"""
    if t.vocab_size is None:
        return ""
    kind = (t.tokenizer_kind or "unknown") + " BPE"
    s = f"{kind}, {t.vocab_size:,} entries, {count(t.n_merges)} merges: {t.n_flagged} of {len(t.findings)} findings flagged"
    if t.flagged_token_ids:
        s += f" ({len(t.flagged_token_ids)} vocabulary entries)"
    return s + "."


def tokenizer_kind(f: TokenizerFinding) -> str:
    if f.kind == "vocabulary":
        return f"vocabulary: {f.detector or '–'}"
    return f.format or "–"


def token_ids(ids: list[int], limit: int = 8) -> str:
    if not ids:
        return "–"
    s = ", ".join(map(str, ids[:limit]))
    return s + (f", … (+{len(ids) - limit})" if len(ids) > limit else "")


def tokenizer_stat(f: TokenizerFinding) -> str:
    """Known secret: ``16/19 chars · p=0.002``; discovery: ``8 points``."""
    if f.kind == "vocabulary":
        return "–" if f.score is None else f"{f.score:g} points"
    parts = []
    if f.covered_chars is not None and f.secret_chars is not None:
        parts.append(f"{f.covered_chars}/{f.secret_chars} chars")
    if f.p_value is not None:
        parts.append(f"p={f.p_value:.2g}")
    return " · ".join(parts) or "–"


def tokenizer_order(findings: list[TokenizerFinding]) -> list[TokenizerFinding]:
    """Flagged first; known secrets before discovery; otherwise as scanned (discovery is ranked)."""
    return sorted(findings, key=lambda f: (not f.flagged, f.kind != "secret"))
