"""The table printed at the end of a run (stdout); secrets already masked in the report."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from scrubber.report import Measurement, Report


def _fmt(m: Measurement | None) -> str:
    if m is None:
        return "-"
    s = f"{m.exposure:.1f}"
    if m.ci_low is not None and m.ci_high is not None and m.ci_high - m.ci_low > 0.05:
        s += f" [{m.ci_low:.1f}, {m.ci_high:.1f}]"
    if m.capped:
        s = "≥" + s
    return s


def print_summary(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    scrubbed = report.scrub is not None
    if report.verdict is not None:  # first: a release pipeline's reader needs it before any table
        colour = "green" if report.verdict.passed else "red"
        console.print(f"[bold {colour}]verdict: {report.verdict.summary}[/bold {colour}]", markup=True,
                      highlight=False)
    table = Table(title=f"scrubber {report.command}: {report.model.path}")
    table.add_column("canary", no_wrap=True)
    table.add_column("reps", justify="right")
    table.add_column("secret", no_wrap=True)
    table.add_column("exposure, bits" if not scrubbed else "before, bits", justify="right")
    if scrubbed:
        table.add_column("after, bits", justify="right")
    table.add_column("extracted")
    for c in report.canaries:
        row = [
            c.id, "-" if c.repetitions is None else str(c.repetitions),
            c.secret + (f" ({c.public_test_value})" if c.public_test_value else ""),
            f"{_fmt(c.before)} ({c.before.exposure_method})",
        ]
        if scrubbed:
            row.append(f"{_fmt(c.after)} ({c.after.exposure_method})" if c.after else "-")
            ext = f"{'yes' if c.before.extracted else 'no'} → {'yes' if c.after and c.after.extracted else 'no'}"
        else:
            ext = "yes" if c.before.extracted else "no"
        row.append(ext)
        table.add_row(*row)
    console.print(table)
    from scrubber.report import _format as F

    if report.utility.perplexity_before is not None or report.utility.bits_per_byte_before is not None:
        console.print(F.utility_line(report.utility), highlight=False)
    if report.data_roles is not None:
        console.print(F.data_roles_line(report), highlight=False)
    for line in F.robustness_lines(report):
        console.print(line, highlight=False)
    if report.scrub is not None:
        s = report.scrub
        console.print(
            f"scrub: {s.method} on {s.params_selected} ({s.n_parameters_updated:,} parameters) "
            f"in {s.seconds:.2f} s; gradient residual {s.gradient_residual:.3g}"
            if s.gradient_residual is not None
            else f"scrub: {s.method} in {s.seconds:.2f} s"
        )
    if report.gate is not None:
        verdict = "FAILED" if report.gate.failed else "passed"
        console.print(f"gate (--fail-above {report.gate.fail_above}): {verdict}")
