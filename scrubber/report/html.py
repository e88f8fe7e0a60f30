"""``report.html``: one self-contained page for people, with the plots inline.

Everything travels in the file (inline CSS, PNGs as data URIs) so it can be attached
to a CI run or mailed; a Content-Security-Policy forbids any fetch or script, so a
hostile string in a model path cannot make the page load anything. Every value from
the report goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
from html import escape

from scrubber.report import _format as F
from scrubber.measure.memorized import canary_memorized, level
from scrubber.report.gate import verdict
from scrubber.report.schema import CanaryReport, FindingReport, Report

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#1c2833}
h1{font-size:1.5em;margin-bottom:.2em}
h2{border-bottom:1px solid #d5d8dc;padding-bottom:.2em;margin-top:1.8em}
.muted{color:#5d6d7e}
.verdict{font-weight:600;padding:.5em .8em;border-radius:4px;display:inline-block}
.v-failed{background:#fadbd8;color:#922b21}
.v-passed{background:#d5f5e3;color:#1d8348}
.v-none{background:#eaecee}
.reveal{background:#fdebd0;border-left:4px solid #e67e22;padding:.5em .8em}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #d5d8dc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f6f7}
code{font-size:12px;overflow-wrap:anywhere}
tr.error td:first-child{border-left:4px solid #c0392b}
tr.warning td:first-child{border-left:4px solid #e67e22}
tr.note td:first-child{border-left:4px solid #27ae60}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eaecee}
figcaption{font-size:12px;color:#5d6d7e}
"""


def _img(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return f'<p class="muted">{escape(alt)}: not drawn, no reference scores kept in this report.</p>'
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _row(cells: list[str], cls: str) -> str:
    """Cells arrive escaped; ``cls`` is the severity level, which colours the row."""
    return f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(header: list[str], rows: list[str]) -> str:
    ths = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _canaries(r: Report, max_plots: int) -> str:
    rows = []
    memorized = canary_memorized(r)
    for c in r.canaries:
        rows.append(_row([
            escape(c.id), escape(c.format), f"<code>{escape(c.secret)}</code>",
            escape(F.count(c.repetitions)), escape(F.num(c.max_exposure)),
            escape(F.exposure(c.before)), escape(c.before.exposure_method),
            escape(F.exposure(c.after)), escape(c.after.exposure_method if c.after else "–"),
            escape(F.yes_no(c.before.extracted)), escape(F.yes_no(c.after.extracted if c.after else None)),
            f"<code>{escape(c.substitute)}</code>" if c.substitute else "–",
            escape(c.nonmember.verdict if c.nonmember else "–"),
        ], level(memorized[c.id], c.current().exposure, c.id, r.gate)))
    head = ["id", "format", "secret", "reps", "max", "exposure before", "method", "after", "method",
            "extracted before", "extracted after", "substitute", "non-member"]
    parts = ["<h2>Canaries</h2>", '<p class="muted">Exposure in bits with its confidence interval; ≥ marks an '
             "estimate capped at log2|R|. Extracted: greedy decoding from the prefix reproduces the secret.</p>",
             _table(head, rows)]
    from scrubber.report.plots import exposure_bars  # matplotlib loads only when a page is drawn

    bars = exposure_bars([(c.id, c.before.exposure, c.after.exposure if c.after else None, c.max_exposure)
                          for c in r.canaries], r.gate.fail_above if r.gate else None)
    parts.append(_img(bars, "Exposure before and after per canary", "Exposure per canary"))
    parts += [_histogram(c.id, c, max_plots > i) for i, c in enumerate(r.canaries)]
    return "\n".join(parts)


def _robustness(r: Report) -> str:
    if r.robustness is None:
        return ""
    from scrubber.report.plots import relearn_curves

    from scrubber.report.markdown import ripple_discovery_lines

    lines = F.robustness_lines(r) + ripple_discovery_lines(r)
    png = relearn_curves([(c.canary_id, c.steps, c.exposures, c.reference_exposures) for c in r.robustness.curves])
    return "\n".join(["<h2>Robustness</h2>", f"<p>{escape(lines[0])}</p>",
                      "<ul>" + "".join(f"<li>{escape(x)}</li>" for x in lines[1:]) + "</ul>",
                      _img(png, "Exposure along the relearning probe", "Relearning probe")])


def _histogram(item_id: str, item: CanaryReport | FindingReport, draw: bool) -> str:
    if not draw:
        return ""
    from scrubber.report.plots import reference_histogram

    before, after = (item.before, item.after) if isinstance(item, CanaryReport) else (item.exposure, None)
    caption = (f"{item_id}: the secret's score among random same-format candidates; "
               "the further left of the crowd, the more exposed.")
    return _img(reference_histogram(item_id, before, after), f"Reference score histogram for {item_id}", caption)


def _findings(r: Report, max_plots: int) -> str:
    items = sorted(r.findings, key=lambda f: -f.exposure.exposure)
    rows = [_row([
        escape(f.id), escape(f.format), escape(f.detector), f"<code>{escape(f.value)}</code>",
        f"<code>{escape(f.prompt)}</code>", escape(F.exposure(f.exposure)), escape(f.exposure.exposure_method),
        escape(F.num(f.zlib_ratio, 2)), escape(F.num(f.perplexity)), escape(F.yes_no(f.memorized)),
    ], level(f.memorized, f.exposure.exposure, f.id, r.gate)) for f in items]
    parts = ["<h2>Findings</h2>"]
    if not rows:
        return parts[0] + '<p class="muted">The discovery scan found no candidate secrets.</p>'
    parts.append(_table(["id", "format", "detector", "value", "prompt", "exposure", "method", "zlib ratio",
                         "perplexity", "memorized"], rows))
    parts += [_histogram(f.id, f, max_plots > i) for i, f in enumerate(items)]
    return "\n".join(parts)


def _tokenizer(r: Report) -> str:
    tok = r.tokenizer
    if tok is None:
        return ""
    parts = ["<h2>Tokenizer</h2>"]
    summary = F.tokenizer_line(tok)
    if summary:
        parts.append(f'<p class="muted">{escape(summary)}</p>')
    if tok.findings:
        rows = [_row([escape(f.id), escape(F.tokenizer_kind(f)), f"<code>{escape(f.value or '–')}</code>",
                      escape(F.token_ids(f.token_ids)), escape(F.tokenizer_stat(f)), escape(F.yes_no(f.flagged)),
                      escape(f.evidence)],
                     "error" if r.gate is not None and f.id in r.gate.offenders else ("warning" if f.flagged else "note"))
                for f in F.tokenizer_order(tok.findings)]
        parts.append(_table(["id", "format / detector", "pieces", "token ids", "covered · p / points", "flagged",
                             "evidence"], rows))
    else:
        parts.append('<p class="muted">No vocabulary entries hold secret pieces.</p>')
    if tok.advice:
        parts.append("<ul>" + "".join(f"<li>{escape(a)}</li>" for a in tok.advice) + "</ul>")
    return "\n".join(parts)


def render_html(report: Report, max_plots: int = 40) -> str:
    """The page; at most ``max_plots`` histograms per section keep it light."""
    r = report
    g = "v-none" if r.gate is None else ("v-failed" if r.gate.failed else "v-passed")
    offenders = ""
    if r.gate is not None and r.gate.offenders:
        ids = ", ".join(f"<code>{escape(o)}</code>" for o in r.gate.offenders)
        offenders = f"<p>Over the threshold: {ids}</p>"
    title = f"scrubber {r.command}: {r.model.path}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{escape(F.model_line(r))}</p>',
        (f'<p class="verdict {"v-passed" if r.verdict.passed else "v-failed"}">{escape(F.verdict_line(r))}</p>'
         if r.verdict is not None else ""),
        f'<p class="verdict {g}">Gate: {escape(verdict(r.gate))}</p>',
        offenders,
        '<p class="reveal">Secrets are shown unmasked (--reveal). Do not share this page.</p>' if r.revealed else "",
        f"<p>{escape(F.utility_line(r.utility))}</p>",
        f'<p class="muted">{escape(F.data_roles_line(r))}</p>' if r.data_roles is not None else "",
        f"<p>{escape(F.scrub_line(r.scrub))}</p>" if r.scrub else "",
        _canaries(r, max_plots) if r.canaries else "",
        _findings(r, max_plots) if r.findings or (r.command == "scan" and not r.canaries) else "",
        _tokenizer(r),
        _robustness(r),
        f'<footer><p class="muted">scrubber {escape(r.tool.version)} · report schema {escape(r.schema_version)} · '
        f"{escape(r.created.isoformat(timespec='seconds'))}</p></footer>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(p for p in body if p)
        + "\n</body>\n</html>\n"
    )
