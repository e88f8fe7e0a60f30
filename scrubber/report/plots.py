"""PNG plots for the HTML page, drawn with matplotlib's Agg renderer.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no global
backend is switched and nothing leaks between calls (or into a user's notebook).
Plots carry ids and numbers only, never secret values: an image cannot be grepped
for a leak, so it must not hold one.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

from matplotlib.figure import Figure

from scrubber.report.schema import Measurement

BEFORE_COLOR = "#c0392b"
AFTER_COLOR = "#2471a3"
_DPI = 96


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _short(label: str, n: int = 22) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _finite(xs: Sequence[float] | None) -> list[float]:
    return [x for x in xs or () if math.isfinite(x)]


def _panel(ax, refs: list[float], marks: list[tuple[Measurement, str, str]], title: str) -> None:
    if refs:
        bins = min(60, max(10, len(refs) // 8))
        ax.hist(refs, bins=bins, color="#aab7b8", edgecolor="white", linewidth=0.4,
                label=f"{len(refs):,} random same-format candidates")
    for m, name, color in marks:
        ax.axvline(m.score_bits, color=color, linewidth=2,
                   label=f"{name}: {m.score_bits:.1f} bits, exposure {m.exposure:.1f}")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("log-perplexity of the secret tokens (bits; lower = more likely)", fontsize=8)
    ax.set_ylabel("candidates", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.4)  # headroom so the legend does not cover bars
    ax.legend(fontsize=7, loc="upper right", frameon=False)


def reference_histogram(item_id: str, before: Measurement, after: Measurement | None = None) -> bytes | None:
    """Reference scores with the secret's score marked, one panel per model whose
    references were kept; ``None`` when no reference scores are in memory (e.g. a
    report read back from JSON, or an exact enumeration)."""
    ref_before, ref_after = _finite(before.reference_scores), _finite(after.reference_scores if after else None)
    if not ref_before and not ref_after:
        return None
    panels = []
    if ref_before:
        marks = [(before, "secret, before", BEFORE_COLOR)]
        if after is not None and not ref_after:  # scrubbed score, against the original references
            marks.append((after, "secret, after scrub", AFTER_COLOR))
        panels.append((ref_before, marks, f"{_short(item_id, 40)}: input model"))
    if ref_after and after is not None:
        marks = [(after, "secret, after scrub", AFTER_COLOR)]
        panels.append((ref_after, marks, f"{_short(item_id, 40)}: scrubbed model"))
    fig = Figure(figsize=(4.6 * len(panels), 2.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (refs, marks, title) in zip(axes, panels):
        _panel(ax, refs, marks, title)
    return _png(fig)


def exposure_bars(
    items: Sequence[tuple[str, float, float | None, float | None]], fail_above: float | None = None
) -> bytes | None:
    """Grouped bars of exposure before/after per item, ``(id, before, after, max)``;
    a tick at log2|R| and a dashed line at the gate threshold."""
    if not items:
        return None
    n = len(items)
    fig = Figure(figsize=(max(4.5, 0.55 * n + 2), 3.0), layout="constrained")
    ax = fig.subplots()
    xs = list(range(n))
    has_after = any(a is not None for _, _, a, _ in items)
    w = 0.38 if has_after else 0.6
    off = w / 2 if has_after else 0.0
    ax.bar([x - off for x in xs], [b for _, b, _, _ in items], w, color=BEFORE_COLOR, label="before")
    if has_after:
        ax.bar([x + off for x in xs], [a if a is not None else 0.0 for _, _, a, _ in items], w,
               color=AFTER_COLOR, label="after scrub")
    maxes = [(x, m) for x, (_, _, _, m) in zip(xs, items) if m is not None]
    if maxes:
        ax.scatter([x for x, _ in maxes], [m for _, m in maxes], marker="_", s=300, color="black",
                   label="log2|R| (maximum)", zorder=3)
    if fail_above is not None:
        ax.axhline(fail_above, color="black", linestyle="--", linewidth=1, label=f"gate: {fail_above:g} bits")
    ax.set_xticks(xs, [_short(i) for i, _, _, _ in items], rotation=30 if n > 4 else 0,
                  ha="right" if n > 4 else "center", fontsize=7)
    ax.set_ylabel("exposure (bits)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def relearn_curves(curves: Sequence[tuple[str, list[int], list[float], list[float] | None]]) -> bytes | None:
    """Exposure along the relearning probe per canary ``(id, steps, exposures, reference)``;
    the reference model's curve dashed in the same colour."""
    if not curves:
        return None
    fig = Figure(figsize=(6.0, 3.0), layout="constrained")
    ax = fig.subplots()
    for i, (cid, steps, exp, ref) in enumerate(curves):
        color = f"C{i % 10}"
        ax.plot(steps, exp, marker="o", markersize=3, color=color, label=_short(cid))
        if ref:
            ax.plot(steps, ref, linestyle="--", color=color, linewidth=1)
    ax.set_xlabel("relearning steps (fine-tune on cleaned data)", fontsize=8)
    ax.set_ylabel("exposure (bits)", fontsize=8)
    ax.set_title("solid: scrubbed model · dashed: reference model", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)
