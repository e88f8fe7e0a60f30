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


def utility_line(u: Utility) -> str:
    if u.perplexity_before is None:
        return "Held-out perplexity: not measured (no eval data)."
    s = f"Held-out perplexity: {num(u.perplexity_before, 2)}"
    if u.perplexity_after is not None:
        s += f" → {num(u.perplexity_after, 2)}"
        if u.perplexity_change_pct is not None:
            s += f" ({u.perplexity_change_pct:+.2f}%)"
    if u.eval_tokens is not None:
        s += f" on {u.eval_tokens:,} tokens"
    return s + "."


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
