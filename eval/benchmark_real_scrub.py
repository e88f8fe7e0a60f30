"""Scrub methods on a genuinely pretrained model: the SmolLM2-135M leak scenario.

``python -m eval.benchmark_real_scrub [--rows NAME,...] [--out DIR]``

The scenario (:mod:`eval.scenario_smollm2`) fine-tunes SmolLM2-135M-Instruct on short
documents with four canaries at 32/16/4/1 repetitions, plus its clean twin (the same
fine-tune without the canaries: for a pretrained model, "retraining without the secret"
means re-running that fine-tune) and a LoRA fine-tune. Each row runs the real
``scrubber scrub`` pipeline (library call, nothing saved) with the scenario's held-out file
as evaluation data and its retain file as retain/tune data, the twin as
``--reference-model``, and reports per canary: exposure before, after and in the twin
(fidelity = after − twin), the non-member verdict, extraction, the bits-per-byte change,
the verdict and the whole-call seconds. Prints JSON; writes benchmark.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

ROWS: dict[str, dict] = {
    "iterative-top4": {"model": "canary", "method": "iterative", "params": "-4:"},
    "iterative-top4-mlp": {"model": "canary", "method": "iterative", "params": "-4:/mlp"},
    "first-order-top4": {"model": "canary", "method": "first-order", "params": "-4:"},
    "iterative-lora-adapter": {"model": "lora", "method": "iterative", "params": "all"},
}
DEFAULT_ROWS = ("iterative-top4", "first-order-top4", "iterative-lora-adapter")


def run_row(name: str, art, n_references: int) -> dict:
    from scrubber import pipeline
    from scrubber.config import ScrubConfig

    spec = ROWS[name]
    model = art.canary_model if spec["model"] == "canary" else art.lora_model
    cfg = ScrubConfig(
        canaries=art.canaries, eval_data=art.heldout, retain_data=art.retain, reference_model=art.twin_model,
        method=spec["method"], params=spec["params"], n_references=n_references, tokenizer_scan=False,
        allow_partial=True,
    )
    t0 = time.perf_counter()
    outcome = pipeline.scrub(model, cfg, save=False)
    seconds = time.perf_counter() - t0
    rep = outcome.report
    u = rep.utility
    return {
        "row": name, "model": str(model), "method": spec["method"], "params": spec["params"],
        "verdict": rep.verdict.summary if rep.verdict else None,
        "bits_per_byte_change_pct": u.bits_per_byte_change_pct,
        "scrub_seconds": rep.scrub.seconds if rep.scrub else None, "whole_call_seconds": seconds,
        "steps": rep.scrub.extra.get("steps") if rep.scrub else None,
        "canaries": [{
            "id": c.id, "repetitions": c.repetitions, "before": c.before.exposure,
            "after": c.after.exposure if c.after else None,
            "twin": c.reference.exposure if c.reference else None, "fidelity_bits": c.fidelity_bits,
            "extracted_before": c.before.extracted, "extracted_after": c.after.extracted if c.after else None,
            "nonmember": c.nonmember.verdict if c.nonmember else None,
        } for c in rep.canaries],
    }


def markdown(rows: Sequence[dict], note: str) -> str:
    out = ["| row | canary (reps) | before | after | twin | after − twin | non-member | extracted before → after |",
           "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        for c in r["canaries"]:
            out.append(f"| {r['row']} | {c['id']} ({c['repetitions']}) | {c['before']:.1f} | {c['after']:.1f} | "
                       f"{c['twin']:.1f} | {c['fidelity_bits']:+.1f} | {c['nonmember']} | "
                       f"{'yes' if c['extracted_before'] else 'no'} → {'yes' if c['extracted_after'] else 'no'} |")
    out += ["", "| row | verdict | bits/byte change | steps | scrub s | whole call s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['row']} | {r['verdict']} | {r['bits_per_byte_change_pct']:+.2f}% | {r['steps']} | "
                   f"{r['scrub_seconds']:.0f} | {r['whole_call_seconds']:.0f} |")
    return "\n".join(out) + "\n\n" + note + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--out", type=Path, default=Path("benchmark-real-scrub"))
    ap.add_argument("--n-references", type=int, default=200)
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"error: unknown row {bad[0]!r} (choose from {', '.join(ROWS)})", file=sys.stderr)
        return 2
    from eval.scenario_smollm2 import build_scenario

    art = build_scenario()
    load0 = os.getloadavg()
    results = []
    for name in rows:
        print(f"[real-scrub {time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        results.append(run_row(name, art, args.n_references))
    note = (f"SmolLM2-135M-Instruct scenario {art.root.name}; exposure with up to {args.n_references} adaptive "
            f"references per canary; CPU, {os.cpu_count()} cores, load average {load0[0]:.1f} at start, "
            f"{os.getloadavg()[0]:.1f} at end.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps({"rows": results, "note": note}, indent=2))
    (args.out / "benchmark.md").write_text(markdown(results, note))
    print(json.dumps({"rows": results, "note": note}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
