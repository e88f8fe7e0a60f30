"""Iterative on all weights, on localized selections, and on a fixed preset, side by side.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python -m eval.benchmark_localize [--checkpoints demo,llama]
        [--masses 0.5,0.8,0.95] [--rules selective,energy,contribution,selective/noemb] [--out DIR]

(a rule with ``/noemb`` leaves the embeddings, and a tied head, out of the candidates). The
default run takes under 2 minutes on one thread; its numbers, and the rule comparison the
default rule was chosen on, are in :data:`scrubber.edits.localize.DEFAULT_RULE`.

Checkpoints as in ``eval.benchmark_second_order``: the cached demo (GPT-2 shaped, tied head,
tokenizer cleaned as the scrub benchmark does) and the held-out 2-layer Llama (untied head,
SentencePiece-style tokenizer; no default was chosen on it).

Rows, each ``METHODS["iterative"]`` with default UpdateSettings on a fresh copy of the model:
``all`` (every weight), ``localized/<rule>@<mass>`` (:func:`scrubber.edits.localize.localize`
from the "all" selection, scored once per checkpoint at the original weights), and
``-2:/mlp`` (the MLP of the last two blocks).

Per row: fraction of weights the update may move, steps, seconds of the method call (plus the
localisation's own seconds), max/mean exposure after on 200 references per canary drawn with
seed 0 (the probe steers by ``ExposureProbe(canaries, seed=1)``'s references, which never judge),
greedy extraction, and bits per byte on the *evaluation* role (held-out documents no method
reads: retain text is training documents, the utility bound reads the validation role).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from scrubber.demo.build import default_cache_dir
from scrubber.edits import METHODS, UpdateSettings
from scrubber.edits.localize import DEFAULT_RULE, localize, score_tensors, selection_from_names
from scrubber.edits.objective import make_edit_pairs
from scrubber.edits.params import select_parameters
from scrubber.edits.task import ExposureProbe, UpdateTask
from scrubber.io.atomic import write_text_atomic
from scrubber.measure.exposure.engine import measure_exposure, references_for
from scrubber.measure.extraction import greedy_extracts
from scrubber.measure.utility import document_utility
from scrubber.pipeline import make_substitutes, retain_blocks

from eval.benchmark_scrub import BenchConfig
from eval.benchmark_second_order import Checkpoint, LlamaSpec, demo_checkpoint, llama_checkpoint

FIXED = "-2:/mlp"


def measure(model, tok, canaries, refs: dict[str, list[str]], docs: list[str], bench: BenchConfig) -> dict:
    """Exposure on references the probe never used, greedy extraction, held-out bits per byte."""
    model.eval()
    exp, extracted = {}, []
    for c in canaries:
        r = measure_exposure(model, tok, c, method="extrapolated", references=refs[c.id], seed=bench.reference_seed,
                             n_boot=bench.n_boot, keep_reference_scores=False)
        exp[c.id] = float(r.exposure)
        if greedy_extracts(model, tok, c.prefix, c.secret):
            extracted.append(c.id)
    util = document_utility(model, tok, docs, max_tokens=bench.max_eval_tokens)
    return {"exposures": exp, "exposure_max": max(exp.values()), "exposure_mean": statistics.fmean(exp.values()),
            "extracted": len(extracted), "extracted_ids": extracted, "bits_per_byte": util.bits_per_byte}


def run_checkpoint(ck: Checkpoint, masses: Sequence[float], rules: Sequence[str], bench: BenchConfig,
                   settings: UpdateSettings, log) -> dict:
    tok, model0, canaries = ck.loaded.tokenizer, ck.loaded.model.eval(), ck.canaries
    subs, _ = make_substitutes(canaries, bench.substitute, bench.substitute_seed, ck.loaded)
    refs = {c.id: references_for(c, bench.references, seed=bench.reference_seed) for c in canaries}
    pairs = [p for c in canaries for p in make_edit_pairs(c.id, c.documents or [c.text], c.secret, subs[c.id])]
    blocks = retain_blocks(ck.loaded, ck.roles.retain)
    tune = retain_blocks(ck.loaded, ck.roles.validation, max_blocks=16)

    def task_for(model, selection) -> UpdateTask:
        return UpdateTask(model=model, tokenizer=tok, canaries=canaries, pairs=pairs, selection=selection,
                          retain_blocks=blocks, tune_blocks=tune, loss_span="secret",
                          probe=ExposureProbe(canaries, seed=bench.reference_seed + 1))

    log(f"[{ck.name}] measuring before")
    before = measure(model0, tok, canaries, refs, ck.roles.evaluation, bench)
    total = select_parameters(model0, "all").numel
    t0 = time.perf_counter()
    details = score_tensors(task_for(model0, select_parameters(model0, "all")))
    score_seconds = time.perf_counter() - t0
    # a rule written "selective/noemb" leaves the embeddings (and a tied head) out before scoring
    locs = {(r, m): localize(task_for(model0, select_parameters(model0, "all")), mass=m, rule=r.split("/")[0],
                             exclude_embeddings=r.endswith("/noemb"), details=details)
            for r in rules for m in masses}
    plans = [("all", lambda m: select_parameters(m, "all"), None)]
    for (r, m), loc in locs.items():
        plans.append((f"localized/{r}@{m:g}", lambda mod, loc=loc: selection_from_names(mod, loc.names), loc))
    plans.append((FIXED, lambda m: select_parameters(m, FIXED), None))
    rows = [{"row": "before", **before, "fraction_moved": 0.0, "bits_per_byte_change_pct": 0.0}]
    for name, make_sel, loc in plans:
        model = copy.deepcopy(model0)
        task = task_for(model, make_sel(model))
        log(f"[{ck.name}] {name}: {task.selection.describe()}")
        t1 = time.perf_counter()
        result = METHODS["iterative"](task, settings)
        seconds = time.perf_counter() - t1
        m = measure(model, tok, canaries, refs, ck.roles.evaluation, bench)
        row = {"row": name, "fraction_moved": task.selection.numel / total, "tensors": len(task.selection),
               "steps": result.steps, "seconds": seconds,
               "localize_seconds": score_seconds if loc is not None else None, **m,
               "bits_per_byte_change_pct": 100 * (m["bits_per_byte"] / before["bits_per_byte"] - 1),
               "target_met": result.extra.get("target_met"), "utility_bound_hit": result.extra.get("utility_bound_hit"),
               "retain_rise_tune": result.extra.get("retain_rise")}
        if loc is not None:
            row["covered"] = loc.covered
            row["chosen"] = loc.names
        rows.append(row)
        log(f"  moved {100 * row['fraction_moved']:.1f}%, {result.steps} steps, {seconds:.0f}s, max {m['exposure_max']:.1f} "
            f"mean {m['exposure_mean']:.1f} bits, extracted {m['extracted']}, bpb {row['bits_per_byte_change_pct']:+.2f}%")
        del task, model
    return {"checkpoint": ck.name, "rows": rows, "total_weights": total, "score_seconds": score_seconds,
            "tensor_scores": [asdict(d) for d in details],
            "canaries": [{"id": c.id, "format": c.format, "repetitions": c.repetitions} for c in canaries]}


def markdown(result: dict) -> str:
    lines = []
    for ck in result["checkpoints"]:
        lines += [f"### {ck['checkpoint']}", "",
                  "| row | moved | steps | seconds | max / mean exposure (bits) | extracted | bits/byte change |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in ck["rows"]:
            sec = "—" if r.get("seconds") is None else f"{r['seconds']:.0f}"
            lines.append(f"| {r['row']} | {100 * r['fraction_moved']:.1f}% | {r.get('steps', '—')} | {sec} | "
                         f"{r['exposure_max']:.1f} / {r['exposure_mean']:.1f} | {r['extracted']}/{len(ck['canaries'])} | "
                         f"{r['bits_per_byte_change_pct']:+.2f}% |")
        lines.append(f"\nScoring (one forget + one retain gradient): {ck['score_seconds']:.1f}s.\n")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark_localize", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmark-localize"))
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--checkpoints", default="demo,llama")
    p.add_argument("--masses", default="0.5,0.8,0.95")
    p.add_argument("--rules", default=DEFAULT_RULE)
    p.add_argument("--n-references", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    log = lambda m: print(f"[localize] {m}", file=sys.stderr, flush=True)  # noqa: E731
    cache_dir = args.cache_dir or default_cache_dir()
    bench = BenchConfig(quick=True, n_references=args.n_references, out=None)
    settings = UpdateSettings()
    masses = [float(x) for x in args.masses.split(",") if x.strip()]
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    load0, t0 = list(os.getloadavg()), time.perf_counter()
    checkpoints = []
    for name in [c.strip() for c in args.checkpoints.split(",") if c.strip()]:
        ck = demo_checkpoint(cache_dir, bench, log) if name == "demo" else llama_checkpoint(cache_dir, LlamaSpec(), log)
        checkpoints.append(run_checkpoint(ck, masses, rules, bench, settings, log))
    result = {"checkpoints": checkpoints, "settings": {
        "update_settings": asdict(settings), "masses": masses, "rules": rules, "n_references": bench.references,
        "reference_seed": bench.reference_seed, "probe_seed": bench.reference_seed + 1,
        "torch_threads": torch.get_num_threads(), "load_avg_start": load0, "load_avg_end": list(os.getloadavg()),
        "total_seconds": time.perf_counter() - t0,
        "utility": "bits per byte on the evaluation role (held-out documents), max 100k tokens"}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "benchmark.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(args.out / "benchmark.md", markdown(result))
    print(json.dumps({ck["checkpoint"]: [{k: r.get(k) for k in ("row", "fraction_moved", "steps", "seconds",
                      "exposure_max", "exposure_mean", "extracted", "bits_per_byte_change_pct")} for r in ck["rows"]]
                      for ck in checkpoints}, indent=1))
    print(markdown(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
