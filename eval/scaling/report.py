"""The Markdown tables and one PNG per curve family (a scan model, a scrub method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)


def _exp(fit: dict[str, float] | None) -> str:
    return "—" if fit is None else f"{fit['exponent']:.2f} (r² {fit['r2']:.2f})"


def _last(last: dict[str, float] | None) -> str:
    return "—" if not last else f"{last['time']:.2f} / {last['flops']:.2f} ({last['from']:g}→{last['to']:g})"


def _range(vals: list[float | None], fmt: str) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "—"
    lo, hi = min(v), max(v)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}–{format(hi, fmt)}"


def exponents_table(curves: list[dict[str, Any]]) -> str:
    rows = [
        "| curve | x | points | wall-time exponent | CPU-time exponent | FLOPs exponent | whole-call exponent | last step: CPU / FLOPs exponent | FLOP efficiency | peak RSS MiB | grows faster than its work |",
        "|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for c in curves:
        skipped = f" (+{len(c['skipped'])} skipped)" if c["skipped"] else ""
        rows.append(
            f"| `{c['name']}` | {c['x']} {','.join(str(x) for x in c['xs'])} | {len(c['xs'])}{skipped} | "
            f"{_exp(c['fits']['seconds'])} | {_exp(c['fits'].get('cpu_seconds'))} | "
            f"{_exp(c['fits']['flops'])} | {_exp(c['fits']['wall_seconds'])} | {_last(c.get('last_step_exponents'))} | "
            f"{_range(c['efficiency'], '.1%')} | {_range(c['peak_rss_mb'], '.0f')} | "
            f"{'**yes**' if c['superlinear'] else 'no'} |"
        )
    return "\n".join(rows)


def points_table(points: list[dict[str, Any]]) -> str:
    rows = [
        "| point | whole call s | timed part s | timed part CPU s | model GFLOP (timed part) | padding overhead | FLOP efficiency | peak RSS MiB | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in points:
        if p["status"] != "ok":
            rows.append(f"| `{p['id']}` | — | — | — | — | — | — | — | {p['status']}: {p.get('note', '')} |")
            continue
        s = p["summary"]
        scrub = p["x"].get("n_secrets") is not None
        gf = (s.get("method_flops") if scrub else s["flops"]) / 1e9
        padded = (s.get("method_padded_flops") if scrub else s.get("padded_flops")) or 0
        pad = f"+{padded / (gf * 1e9) - 1:.0%}" if gf else "—"
        note = p.get("note") or ""
        rows.append(
            f"| `{p['id']}` | {s['wall_seconds']:.1f} | {s['seconds']:.1f} | {_num(s.get('cpu_seconds'), '.1f')} | "
            f"{gf:.1f} | {pad} | "
            f"{_num(s['efficiency'], '.1%')} | {s['peak_rss_mb']:.0f} | {note} |"
        )
    return "\n".join(rows)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Scaling benchmark",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Device {m['device']}, torch {m['torch']}, {m['torch_threads']} torch thread(s), {m['cpu_count']} CPUs; "
        f"load average {m['load_start']} at start, {m['load_end']} at end; "
        f"matmul ceiling {m['matmul_gflops_start']:.1f} GFLOP/s at start, {m['matmul_gflops_end']:.1f} at end; "
        f"whole run {result['seconds'] / 60:.1f} min.",
        "",
        "## Growth exponents",
        "",
        exponents_table(result["curves"]),
        "",
        "## Points",
        "",
        points_table(result["points"]),
        "",
    ]
    return "\n".join(lines)


def plot_families(result: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per scan model and per scrub method; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    curves = result["curves"]
    written: list[Path] = []
    families: dict[str, list[dict[str, Any]]] = {}
    for c in curves:
        parts = c["name"].split("/")
        families.setdefault("/".join(parts[:2]), []).append(c)
    for fam, cs in families.items():
        if not any(c["xs"] for c in cs):
            continue
        if fam.startswith("scan/"):
            fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
            c = cs[0]
            a.loglog(c["xs"], c["seconds"], "o-", label="timed, wall (call − model load)")
            if c.get("cpu_seconds"):
                a.loglog(c["xs"], c["cpu_seconds"], "^:", label="timed, CPU seconds")
            rate = c["matmul_cpu_gflops"] if all(c.get("matmul_cpu_gflops") or [0]) else c["matmul_gflops"]
            a.loglog(c["xs"], [f / (g * 1e9) for f, g in zip(c["flops"], rate)], "x-.",
                     label="FLOP lower bound (CPU s at matmul speed)")
            a.set_xlabel("canaries")
            a.set_ylabel("seconds")
            a.legend(fontsize=8)
            e = c["fits"].get("cpu_seconds") or c["fits"]["seconds"]
            kind = "CPU-time" if c["fits"].get("cpu_seconds") else "time"
            a.set_title(f"{fam}: {kind} exponent {e['exponent']:.2f}" if e else fam, fontsize=9)
            b.semilogx(c["xs"], [100 * (x or 0) for x in c["efficiency"]], "o-")
            b.set_xlabel("canaries")
            b.set_ylabel("% of matmul FLOP/s")
            b.set_ylim(0, 100)
            b.set_title("FLOP efficiency (2·params·tokens, per CPU second)", fontsize=9)
        else:
            fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
            for c in cs:
                ax = a if "/vs-secrets/" in c["name"] else b
                if c["xs"]:
                    ys = c.get("cpu_seconds") or c["load_normalised_seconds"]
                    ax.loglog(c["xs"], ys, "o-", label=c["name"].split("/")[-1])
            a.set_xlabel("secrets")
            b.set_xlabel("documents per secret")
            for ax in (a, b):
                ax.set_ylabel("method CPU seconds")
                ax.legend(fontsize=8)
            a.set_title(f"{fam}: vs secrets", fontsize=9)
            b.set_title(f"{fam}: vs documents per secret", fontsize=9)
        for ax in fig.axes:
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            if ax.get_yscale() == "log":
                ax.yaxis.set_major_formatter(ScalarFormatter())
        fig.tight_layout()
        path = out / f"{fam.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
