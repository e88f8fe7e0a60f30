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

Each row also gets the relearning probe (:mod:`scrubber.judge.robustness`, the scrub
command's default budget of 30 AdamW steps, all weights, a LoRA adapter merged first) on
the scrubbed model, next to the same probe on the twin, run once for all rows (same data,
seed and references): bits regained = peak exposure under the probe − exposure right after
the scrub. The probe trains on the canaries' documents with each secret replaced by the
scrub's substitute plus the scenario's retain file. ``--no-relearn`` skips it;
``--unscrubbed`` adds a row probing the canary model as it is (no scrub).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from scrubber.judge.robustness import RelearnCurve, RelearnSettings

ROWS: dict[str, dict] = {
    "iterative-top4": {"model": "canary", "method": "iterative", "params": "-4:"},
    "iterative-top4-mlp": {"model": "canary", "method": "iterative", "params": "-4:/mlp"},
    "first-order-top4": {"model": "canary", "method": "first-order", "params": "-4:"},
    "iterative-lora-adapter": {"model": "lora", "method": "iterative", "params": "all"},
    "iterative-new-lora": {"model": "canary", "method": "iterative", "params": "all", "lora": True},
}
DEFAULT_ROWS = ("iterative-top4", "first-order-top4", "iterative-lora-adapter")


@dataclass
class Relearn:
    """The probe every row shares: its settings, data, and the twin's curves under it."""

    settings: RelearnSettings
    canaries: list
    texts: list[str]
    twin: dict[str, RelearnCurve]
    twin_seconds: float
    canary_documents: int
    retain_documents: int


def prepare_relearn(art, settings: RelearnSettings) -> Relearn:
    """Probe the twin once; the substitutes are the scrub's own (strategy random, seed 0: deterministic)."""
    from canaries import load_canaries
    from scrubber.io.checkpoint import load_model
    from scrubber.io.data import load_texts
    from scrubber.judge.robustness import relearn_probe, relearn_texts
    from scrubber.pipeline import make_substitutes

    canaries = load_canaries(art.canaries)
    twin = load_model(art.twin_model)
    subs, _ = make_substitutes(canaries, "random", 0, twin)
    retain = load_texts(art.retain)
    texts = relearn_texts(canaries, subs, retain)
    res = relearn_probe(twin.model, twin.tokenizer, canaries, texts, settings, on_step=_step_log("twin"))
    return Relearn(settings, canaries, texts, res.curves, res.seconds, len(texts) - len(retain), len(retain))


def _step_log(what: str):
    def on_step(step: int, total: int) -> None:
        if step == 1 or step % 10 == 0 or step == total:
            print(f"[real-scrub {time.strftime('%H:%M:%S')}] relearn {what}: step {step}/{total}",
                  file=sys.stderr, flush=True)
    return on_step


def relearn_row(model, tokenizer, rl: Relearn, what: str) -> dict:
    from eval.benchmark_scrub import relearn_columns
    from scrubber.judge.robustness import relearn_probe

    res = relearn_probe(model, tokenizer, rl.canaries, rl.texts, rl.settings, on_step=_step_log(what))
    return relearn_columns(res, rl.twin)


def run_unscrubbed(art, rl: Relearn | None) -> dict:
    """The canary model itself under the probe: what a scrub has to beat."""
    from scrubber.io.checkpoint import load_model

    loaded = load_model(art.canary_model)
    row = {"row": "unscrubbed", "model": str(art.canary_model), "method": "none", "params": "—",
           "verdict": None, "bits_per_byte_change_pct": 0.0, "scrub_seconds": 0.0, "whole_call_seconds": 0.0,
           "steps": 0, "canaries": []}
    if rl is not None:
        row["relearn"] = relearn_row(loaded.model, loaded.tokenizer, rl, "unscrubbed")
    return row


def run_row(name: str, art, n_references: int, rl: Relearn | None = None) -> dict:
    from scrubber import pipeline
    from scrubber.config import ScrubConfig
    from scrubber.progress import LineProgress

    spec = ROWS[name]
    model = art.canary_model if spec["model"] == "canary" else art.lora_model
    cfg = ScrubConfig(
        canaries=art.canaries, eval_data=art.heldout, retain_data=art.retain, reference_model=art.twin_model,
        method=spec["method"], params=spec["params"], n_references=n_references, tokenizer_scan=False,
        allow_partial=True, lora=spec.get("lora", False),
    )
    t0 = time.perf_counter()
    outcome = pipeline.scrub(model, cfg, LineProgress(), save=False)  # a stage line every few seconds: a long row is never silent
    seconds = time.perf_counter() - t0
    rep = outcome.report
    u = rep.utility
    relearn = relearn_row(outcome.loaded.model, outcome.loaded.tokenizer, rl, name) if rl is not None else None
    return {
        "relearn": relearn,
        "row": name, "model": str(model), "method": spec["method"], "params": spec["params"],
        "lora": spec.get("lora", False), "verdict": rep.verdict.summary if rep.verdict else None,
        "bits_per_byte_change_pct": u.bits_per_byte_change_pct,
        "scrub_seconds": rep.scrub.seconds if rep.scrub else None, "whole_call_seconds": seconds,
        "steps": rep.scrub.extra.get("steps") if rep.scrub else None,
        "scrub_extra": {k: v for k, v in (rep.scrub.extra if rep.scrub else {}).items() if k != "localization"},
        "canaries": [{
            "id": c.id, "repetitions": c.repetitions, "before": c.before.exposure,
            "after": c.after.exposure if c.after else None,
            "twin": c.reference.exposure if c.reference else None, "fidelity_bits": c.fidelity_bits,
            "extracted_before": c.before.extracted, "extracted_after": c.after.extracted if c.after else None,
            "nonmember": c.nonmember.verdict if c.nonmember else None,
        } for c in rep.canaries],
    }


def relearn_markdown(rows: Sequence[dict], rl: dict | None) -> list[str]:
    if rl is None:
        return []
    out = ["", "| row | regained max (bits) | regained mean | twin regained max | twin mean | "
               "max (peak − twin peak) | extracted after probe | probe s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        x = r.get("relearn")
        if not x:
            continue
        out.append(f"| {r['row']} | {x['relearn_regained_max']:.1f} | {x['relearn_regained_mean']:.1f} | "
                   f"{x['twin_regained_max']:.1f} | {x['twin_regained_mean']:.1f} | {x['relearn_excess_max']:+.1f} | "
                   f"{x['relearn_extracted']}/{len(x['relearn_curves'])} | {x['relearn_seconds']:.0f} |")
    s = rl["settings"]
    out += ["", f"Relearning probe: {s['steps']} AdamW steps ({s['batch_size']} blocks of {s['block_size']} tokens, "
                f"lr {s['lr']:g}, all weights, LoRA merged first) on {rl['canary_documents']} canary documents with "
                f"each secret replaced by the scrub's substitute plus {rl['retain_documents']} retain documents; "
                f"exposure every {s['every']} steps against {s['n_references']} references of the probe's own seed. "
                f"The twin's probe ran once ({rl['twin_seconds']:.0f} s) and is every row's yardstick."]
    return out


def markdown(rows: Sequence[dict], note: str, rl: dict | None = None) -> str:
    out = ["| row | canary (reps) | before | after | twin | after − twin | non-member | extracted before → after |",
           "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        for c in r["canaries"]:  # the unscrubbed row has no scrub columns
            out.append(f"| {r['row']} | {c['id']} ({c['repetitions']}) | {c['before']:.1f} | {c['after']:.1f} | "
                       f"{c['twin']:.1f} | {c['fidelity_bits']:+.1f} | {c['nonmember']} | "
                       f"{'yes' if c['extracted_before'] else 'no'} → {'yes' if c['extracted_after'] else 'no'} |")
    out += ["", "| row | verdict | bits/byte change | steps | scrub s | whole call s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["verdict"] is None and not r["canaries"]:
            continue
        out.append(f"| {r['row']} | {r['verdict']} | {r['bits_per_byte_change_pct']:+.2f}% | {r['steps']} | "
                   f"{r['scrub_seconds']:.0f} | {r['whole_call_seconds']:.0f} |")
    out += relearn_markdown(rows, rl)
    return "\n".join(out) + "\n\n" + note + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--out", type=Path, default=Path("benchmark-real-scrub"))
    ap.add_argument("--n-references", type=int, default=200)
    ap.add_argument("--no-relearn", action="store_true", help="skip the relearning probe (the old runtimes)")
    ap.add_argument("--relearn-steps", type=int, default=30)
    ap.add_argument("--relearn-references", type=int, default=200, help="references per canary along the probe")
    ap.add_argument("--unscrubbed", action="store_true", help="also probe the canary model without a scrub")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"error: unknown row {bad[0]!r} (choose from {', '.join(ROWS)})", file=sys.stderr)
        return 2
    from eval.scenario_smollm2 import build_scenario

    art = build_scenario()
    load0 = os.getloadavg()
    rl, rl_info = None, None
    if not args.no_relearn:
        settings = RelearnSettings(steps=args.relearn_steps, every=min(5, args.relearn_steps),
                                   n_references=args.relearn_references)
        print(f"[real-scrub {time.strftime('%H:%M:%S')}] relearning probe on the twin", file=sys.stderr, flush=True)
        rl = prepare_relearn(art, settings)
        rl_info = {"settings": asdict(settings), "twin_seconds": rl.twin_seconds,
                   "canary_documents": rl.canary_documents, "retain_documents": rl.retain_documents,
                   "twin_curves": {cid: c.exposures for cid, c in rl.twin.items()}}
        _write(args.out, [], rl_info, "partial: the twin's probe only")  # minutes of work on a CPU: keep it
    results = []
    for name in rows:
        print(f"[real-scrub {time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        results.append(run_row(name, art, args.n_references, rl))
        r = results[-1]
        print(f"[real-scrub {time.strftime('%H:%M:%S')}] {name}: {r['verdict']}; bits/byte "
              f"{r['bits_per_byte_change_pct']:+.2f}%, {r['steps']} steps, {r['scrub_seconds']:.0f} s; after (twin): "
              + ", ".join(f"{c['after']:.1f} ({c['twin']:.1f})" for c in r["canaries"]), file=sys.stderr, flush=True)
        _write(args.out, results, rl_info, "partial: rows still running")
    if args.unscrubbed:
        results.append(run_unscrubbed(art, rl))
    note = (f"SmolLM2-135M-Instruct scenario {art.root.name}; exposure with up to {args.n_references} adaptive "
            f"references per canary; CPU, {os.cpu_count()} cores, load average {load0[0]:.1f} at start, "
            f"{os.getloadavg()[0]:.1f} at end.")
    _write(args.out, results, rl_info, note)
    print(json.dumps({"rows": results, "note": note, "relearn": rl_info}, indent=2))
    return 0


def _write(out: Path, results: list[dict], rl_info: dict | None, note: str) -> None:
    """After every row, so a long run that is stopped keeps what it finished."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps({"rows": results, "note": note, "relearn": rl_info}, indent=2))
    (out / "benchmark.md").write_text(markdown(results, note, rl_info))


if __name__ == "__main__":
    raise SystemExit(main())
