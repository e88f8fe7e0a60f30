"""``report.md``: a summary short enough for a pull-request comment.

Every value from the report is escaped: a masked card ``**** **** **** 1241`` would
otherwise render as bold text, and a ``|`` in a password would break the table.
Long tables are cut at ``max_rows`` (GitHub comments stop at 65,536 characters).
"""

from __future__ import annotations

import re

from scrubber.report import _format as F
from scrubber.measure.memorized import canary_memorized, level
from scrubber.report.gate import verdict
from scrubber.report.schema import Report

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#+|~@])")
_ICON = {"error": "🔴", "warning": "🟠", "note": "🟢"}


def ripple_discovery_lines(r: Report) -> list[str]:
    """The discovery ripple check: secrets nobody listed that the scrub made worse (one line each).
    Kept here until ``_format.robustness_lines`` takes it; html.py shares it."""
    rd = r.robustness.ripple_discovery if r.robustness is not None else None
    if rd is None:
        return []
    lines = [f"Discovery ripple scan ({rd.budget}): {rd.findings_before} values before, {rd.findings_after} after "
             f"({rd.excluded} scrubbed secrets/substitutes left out), {rd.seconds:.1f} s; "
             + (f"{len(rd.rows)} new or risen." if rd.rows else "none new or risen.")]
    for x in rd.rows:
        was = "not found before" if x.before is None else f"{x.before:.1f} bits before"
        lines.append(f"found {x.finding_id} ({x.format}, {x.value}): {was} → {x.after:.1f} bits"
                     + ("; NEW memorized finding" if x.new else "") + ("; ROSE" if x.rose else ""))
    return lines


def md_escape(text: object) -> str:
    """Literal text inside Markdown (tables included): emphasis, code, link, HTML,
    heading/list, table and @mention characters backslash-escaped, ``&`` neutralised so
    entities cannot smuggle markup, line breaks flattened. ``(`` and ``!`` stay: with
    ``[`` escaped they cannot form a link or image."""
    s = str(text).replace("&", "&amp;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"[\r\n]+", " ", s)


def _table(header: list[str], rows: list[list[str]], max_rows: int) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows[:max_rows]]
    if len(rows) > max_rows:
        out.append(f"\n_… and {len(rows) - max_rows} more rows: see report.json._")
    return out


def _canary_rows(r: Report) -> list[list[str]]:
    rows = []
    decided = canary_memorized(r)
    for c in r.canaries:
        cur = c.current()
        memorized = decided[c.id]
        rows.append([
            f"{_ICON[level(memorized, cur.exposure, c.id, r.gate)]} {md_escape(c.id)}",
            md_escape(c.format),
            md_escape(c.secret) + (f" ({md_escape(c.public_test_value)})" if c.public_test_value else ""),
            F.count(c.repetitions),
            F.num(c.max_exposure),
            F.exposure(c.before),
            c.before.exposure_method,
            F.exposure(c.after),
            F.yes_no(c.before.extracted) + " / " + F.yes_no(c.after.extracted if c.after else None),
            c.nonmember.verdict if c.nonmember else "–",
            F.yes_no(memorized),
        ])
    return rows


def _finding_rows(r: Report) -> list[list[str]]:
    rows = []
    for f in sorted(r.findings, key=lambda f: -f.exposure.exposure):
        rows.append([
            f"{_ICON[level(f.memorized, f.exposure.exposure, f.id, r.gate)]} {md_escape(f.id)}",
            md_escape(f.format),
            md_escape(f.detector),
            md_escape(f.value) + (f" ({md_escape(f.public_test_value)})" if f.public_test_value else ""),
            md_escape(f.prompt),
            F.exposure(f.exposure) + f" {f.exposure.exposure_method}",
            F.num(f.zlib_ratio, 2),
            F.num(f.perplexity, 1),
            F.yes_no(f.memorized),
        ])
    return rows


def _tokenizer_lines(r: Report, max_rows: int) -> list[str]:
    tok = r.tokenizer
    if tok is None:
        return []
    lines = ["", "### Tokenizer", ""]
    summary = F.tokenizer_line(tok)
    if summary:
        lines += [md_escape(summary), ""]
    if not tok.findings:
        lines.append("No vocabulary entries hold secret pieces.")
    else:
        rows = [
            [("🔴 " if f.flagged else "🟢 ") + md_escape(f.id), md_escape(F.tokenizer_kind(f)),
             md_escape(f.value or "–"), md_escape(F.token_ids(f.token_ids)), md_escape(F.tokenizer_stat(f)),
             F.yes_no(f.flagged), md_escape(f.evidence)]
            for f in F.tokenizer_order(tok.findings)
        ]
        lines += _table(["id", "format / detector", "pieces", "token ids", "covered · p / points", "flagged",
                         "evidence"], rows, max_rows)
    if tok.advice:
        lines += [""] + [f"- {md_escape(a)}" for a in tok.advice]
    return lines


def render_markdown(report: Report, max_rows: int = 50) -> str:
    r = report
    lines = [f"## scrubber {md_escape(r.command)}: {md_escape(r.model.path)}", ""]
    if F.verdict_line(r):
        icon = "✅" if r.verdict and r.verdict.passed else "❌"
        lines += [f"{icon} **{md_escape(F.verdict_line(r))}**", ""]
    lines.append(f"**Gate:** {md_escape(verdict(r.gate))}")
    if r.gate is not None and r.gate.offenders:
        lines.append("")
        lines.append("Over the threshold: " + ", ".join(md_escape(o) for o in r.gate.offenders[:max_rows]))
    lines += [
        "",
        f"Model: {md_escape(F.model_line(r))}. scrubber {md_escape(r.tool.version)}, "
        f"{r.created.isoformat(timespec='seconds')}, report schema {r.schema_version}.",
    ]
    if r.revealed:
        lines += ["", "> ⚠️ **Secrets are shown unmasked (--reveal). Do not post this publicly.**"]
    if r.canaries:
        lines += ["", "### Canaries", "", "Exposure in bits (confidence interval); after = scrubbed model.", ""]
        lines += _table(
            ["id", "format", "secret", "reps", "max", "exposure before", "method", "after", "extracted before / after",
             "non-member", "memorized"],
            _canary_rows(r), max_rows,
        )
    if r.findings or (r.command == "scan" and not r.canaries):
        lines += ["", "### Findings", ""]
        if r.findings:
            lines += _table(
                ["id", "format", "detector", "value", "prompt", "exposure", "zlib ratio", "perplexity", "memorized"],
                _finding_rows(r), max_rows,
            )
        else:
            lines.append("The discovery scan found no candidate secrets.")
    lines += _tokenizer_lines(r, max_rows)
    if r.robustness is not None:
        lines += ["", "### Robustness", ""] + [f"- {md_escape(x)}" for x in
                                               F.robustness_lines(r) + ripple_discovery_lines(r)]
    lines += ["", md_escape(F.utility_line(r.utility))]
    if F.data_roles_line(r):
        lines += ["", md_escape(F.data_roles_line(r))]
    if r.scrub is not None:
        lines += ["", md_escape(F.scrub_line(r.scrub))]
    return "\n".join(lines) + "\n"
