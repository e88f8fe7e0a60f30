"""From points to curves: the series each curve plots, its fitted exponents, and its flags.

Each curve gets exponents for time, for time rescaled to one machine speed (each point's
matmul FLOP/s, timed before and after it, against the curve's first point: the machine is
shared, and its speed changed by up to 2x within one run), and for FLOPs (the work done).
On CPU each point's CPU seconds (``time.process_time``) are fitted too, and are what the
flag judges: other jobs change wall time, not the CPU time of the work.
Time growing faster than FLOPs (``superlinear``: that exponent above 1
and above the FLOPs exponent by more than ``TOLERANCE``, over the whole curve or between
its last two points)
means cost per unit of work rises with scale, which needs an explanation or a fix; time
growing slower than FLOPs is fixed overhead being amortised.
"""

from __future__ import annotations

import math
from typing import Any

from eval.scaling.fit import fit_power

TOLERANCE = 0.1
"""Exponent gap (time vs FLOPs) below which a curve counts as growing like its work."""


def efficiency(flops: float | None, seconds: float | None, matmul: float | None) -> float | None:
    """Achieved FLOP/s over the measured matmul FLOP/s: 1.0 = at the machine's ceiling."""
    if not flops or not seconds or not matmul:
        return None
    return flops / seconds / matmul


def point_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers a curve plots from one point's result: timed seconds and FLOPs of the part
    that scales (scan: the call minus the model load; scrub: the method call), and of the whole.

    FLOPs are over real (unpadded) tokens, the lower bound of the work; ``padded_flops`` counts
    every position computed, so ``padded_flops / flops`` is what padding adds.
    """
    fl = result["counter"]["flops"]
    flops = fl.get("total_real", fl["total"])
    mm = result["matmul_flops_per_s"]
    out = {
        "wall_seconds": result["wall_seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "peak_cuda_mb": result.get("peak_cuda_mb"),
        "flops": flops,
        "padded_flops": fl["total"],
        "efficiency_whole": efficiency(flops, result["work_seconds"], mm),
    }
    mm_cpu = result.get("matmul_cpu_flops_per_s")
    if result["spec"]["kind"] == "scrub":
        s = result["scrub"]
        mf = s["method_flops"].get("total_real", s["method_flops"]["total"])
        cpu = s.get("method_cpu_seconds")
        out.update(seconds=s["method_seconds"], cpu_seconds=cpu, method_flops=mf,
                   method_padded_flops=s["method_flops"]["total"],
                   efficiency_wall=efficiency(mf, s["method_seconds"], mm))
    else:
        cpu = result.get("work_cpu_seconds")
        out.update(seconds=result["work_seconds"], cpu_seconds=cpu, efficiency_wall=out["efficiency_whole"])
    # on CPU the efficiency is CPU-time over CPU-time: FLOPs per CPU second against the matmul's
    # FLOPs per CPU second, which the other jobs on a shared machine do not move
    out["efficiency"] = efficiency(out.get("method_flops", flops), cpu, mm_cpu) if cpu and mm_cpu \
        else out["efficiency_wall"]
    return out


def _fit(xs, ys) -> dict[str, float] | None:
    f = fit_power(xs, ys)
    return None if f is None else {"exponent": f.exponent, "r2": f.r2, "n_points": f.n_points}


def build_curves(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per curve name found in the points, with its series and fits."""
    names: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        for c in p["curves"]:
            names.setdefault(c, []).append(p)
    curves = []
    for name, pts in names.items():
        scan = name.startswith("scan/")
        x_name = "n_canaries" if scan else ("n_secrets" if "/vs-secrets/" in name else "docs_per_secret")
        ok = sorted((p for p in pts if p["status"] == "ok"), key=lambda p: p["x"][x_name])
        xs = [p["x"][x_name] for p in ok]
        sec = [p["summary"]["seconds"] for p in ok]
        wall = [p["summary"]["wall_seconds"] for p in ok]
        fl = [p["summary"]["method_flops" if not scan else "flops"] for p in ok]
        # seconds rescaled to the same machine speed (matmul rate at the curve's first point):
        # a shared machine that slows down mid-curve otherwise reads as superlinear growth
        mm = [p["result"]["matmul_flops_per_s"] for p in ok]
        norm = [t * m / mm[0] for t, m in zip(sec, mm)] if ok else []
        cpu = [p["summary"].get("cpu_seconds") for p in ok]
        cpu = cpu if ok and all(cpu) else []
        fits = {"seconds": _fit(xs, sec), "wall_seconds": _fit(xs, wall), "flops": _fit(xs, fl),
                "load_normalised_seconds": _fit(xs, norm), "cpu_seconds": _fit(xs, cpu) if cpu else None}
        times = cpu or norm  # the load-robust time
        # the exponent between the last two points: a curve that bends upward (fixed costs at
        # the small end, a batch that outgrows the caches at the large end) hides it in one fit
        last = None
        if len(xs) >= 2 and times[-2] > 0 and fl[-2] > 0:
            lx = math.log(xs[-1] / xs[-2])
            last = {"time": math.log(times[-1] / times[-2]) / lx, "flops": math.log(fl[-1] / fl[-2]) / lx,
                    "from": xs[-2], "to": xs[-1]}
        gap = None
        judged = fits["cpu_seconds"] or fits["load_normalised_seconds"]
        if judged and fits["flops"]:
            gap = judged["exponent"] - fits["flops"]["exponent"]
        curves.append({
            "name": name,
            "x": x_name,
            "xs": xs,
            "seconds": sec,
            "load_normalised_seconds": norm,
            "cpu_seconds": cpu,
            "matmul_gflops": [m / 1e9 for m in mm],
            "matmul_cpu_gflops": [(p["result"].get("matmul_cpu_flops_per_s") or 0) / 1e9 for p in ok],
            "wall_seconds": wall,
            "flops": fl,
            "peak_rss_mb": [p["summary"]["peak_rss_mb"] for p in ok],
            "efficiency": [p["summary"]["efficiency"] for p in ok],
            "points": [p["id"] for p in ok],
            "skipped": [{"id": p["id"], "note": p.get("note")} for p in pts if p["status"] != "ok"],
            "fits": fits,
            "time_minus_flops_exponent": gap,
            "last_step_exponents": last,
            "superlinear": bool(
                (gap is not None and gap > TOLERANCE and judged["exponent"] > 1 + TOLERANCE)
                or (last is not None and last["time"] - last["flops"] > TOLERANCE and last["time"] > 1 + TOLERANCE)
            ),
        })
    return curves
