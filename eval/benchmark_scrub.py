"""Every scrub method and baseline on the same demo model, canaries, substitutes and references.

    python -m eval.benchmark_scrub [--quick] [--out DIR] [--threads N] [--methods a,b,...]

Builds (or loads from the demo cache, ``SCRUBBER_CACHE``) the demo model,
measures every canary's exposure before, then runs each method on a fresh copy
of that model and measures again with the same per-canary references
(``references_for`` with a fixed seed, extrapolated exposure). The gold
standard is a model retrained from scratch without the canaries
(:mod:`eval.baselines.retrain`), cached beside the demo: the first run trains
it (minutes), later runs load it and report the training time recorded then.

Prints the JSON result on stdout and writes ``DIR/benchmark.json`` and
``DIR/benchmark.md``. ``--quick`` scores 200 references per canary instead of
1000; nothing else changes (retraining is the yardstick and is never cut short).

Timings are wall-clock seconds of the method call alone (not the exposure
measurement around it), under the torch thread count in ``settings``; the load
average at start and end is recorded because this benchmark is meant to run on
shared machines.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from canaries import Canary
from scrubber.atomic import write_text_atomic
from scrubber.data import load_texts
from scrubber.demo import DemoSpec, build_demo, default_cache_dir
from scrubber.exposure.engine import measure_exposure, references_for
from scrubber.extraction import greedy_extracts
from scrubber.influence.objective import make_edit_pairs
from scrubber.influence.params import add_lora_adapter, select_parameters
from scrubber.models import load_model
from scrubber.pipeline import make_substitutes, retain_blocks
from scrubber.updates import METHODS, UpdateSettings
from scrubber.updates.task import ExposureProbe, UpdateTask
from scrubber.utility import perplexity

from eval.baselines import BASELINES, BaselineConfig, load_or_retrain

WITHIN_BITS = 2.0
"""A canary counts as 'like retraining' when its exposure after is within this many bits of the retrained model's."""

# Row names: retrain, the baselines, then the scrubber's own methods and their LoRA variants.
DEFAULT_METHODS: tuple[str, ...] = (
    "retrain",
    "finetune",
    "gradient_ascent",
    "graddiff",
    "npo",
    "iau",
    "first_order",
    "second_order",
    "iterative",
    "first_order_lora",
    "iterative_lora",
)
LORA_SUFFIX = "_lora"


@dataclass
class BenchConfig:
    spec: DemoSpec = field(default_factory=DemoSpec)
    cache_dir: Path | None = None
    out: Path | None = Path("benchmark-scrub")
    quick: bool = False
    n_references: int | None = None
    """References per canary; default 1000, or 200 with ``quick``."""
    reference_seed: int = 0
    substitute: str = "random"
    substitute_seed: int = 0
    drop_leaking_tokens: bool = True
    """Clean the tokenizer first, as ``scrubber demo`` does (see run_benchmark)."""
    threads: int = 1
    methods: tuple[str, ...] = DEFAULT_METHODS
    lora_rank: int = 8
    max_eval_tokens: int = 100_000
    n_boot: int = 50
    """Bootstrap refits for the exposure interval (only the point estimate enters the table)."""
    update: UpdateSettings = field(default_factory=UpdateSettings)
    baseline: BaselineConfig | None = None
    """None: open-unlearning's recipe with the demo's own training rate (see eval.baselines._common)."""
    log: Callable[[str], None] | None = None

    @property
    def references(self) -> int:
        if self.n_references is not None:
            return self.n_references
        return 200 if self.quick else 1000


def _registry_key(name: str) -> str | None:
    """The scrubber.updates.METHODS key for a row name (``first_order`` -> ``first-order``)."""
    for key in (name, name.replace("_", "-")):
        if key in METHODS:
            return key
    return None


# ----------------------------------------------------------------------------- measurement


@dataclass
class Measured:
    exposures: dict[str, float]
    extracted: list[str]
    perplexity: float


def measure(model, tokenizer, canaries: Sequence[Canary], refs: dict[str, list[str]],
            heldout: list[str], cfg: BenchConfig) -> Measured:
    model.eval()
    exposures: dict[str, float] = {}
    extracted: list[str] = []
    for c in canaries:
        r = measure_exposure(
            model, tokenizer, c, method="extrapolated", references=refs[c.id],
            seed=cfg.reference_seed, n_boot=cfg.n_boot, keep_reference_scores=False,
        )  # fmt: skip
        exposures[c.id] = float(r.exposure)
        if greedy_extracts(model, tokenizer, c.prefix, c.secret):
            extracted.append(c.id)
    ppl, _ = perplexity(model, tokenizer, heldout, max_tokens=cfg.max_eval_tokens)
    return Measured(exposures, extracted, ppl)


def _row(method: str, m: Measured, before: Measured, retrain_exp: dict[str, float] | None,
         seconds: float, retrain_seconds: float, **extra: Any) -> dict:
    values = list(m.exposures.values())
    within = None
    if retrain_exp is not None:
        within = sum(abs(e - retrain_exp[cid]) <= WITHIN_BITS for cid, e in m.exposures.items())
    return {
        "method": method,
        "exposure_median": statistics.median(values),
        "exposure_max": max(values),
        "extracted": len(m.extracted),
        "extracted_ids": m.extracted,
        "perplexity": m.perplexity,
        "perplexity_change_pct": 100.0 * (m.perplexity - before.perplexity) / before.perplexity,
        "seconds": seconds,
        "fraction_of_retrain": seconds / retrain_seconds if retrain_seconds > 0 else None,
        "within_2_bits_of_retrain": within,
        "canaries": dict(m.exposures),
        **extra,
    }


# ----------------------------------------------------------------------------- running methods


def _fresh_task(base_model, tokenizer, canaries, pairs, blocks, lora: bool, cfg: BenchConfig):
    model = copy.deepcopy(base_model)
    spec = "all"
    if lora:
        torch.manual_seed(cfg.reference_seed)  # LoRA's A matrices start random: same start every run
        model = add_lora_adapter(model, r=cfg.lora_rank)
        spec = "lora"
    sel = select_parameters(model, spec)
    task = UpdateTask(
        model=model,
        tokenizer=tokenizer,
        canaries=canaries,
        pairs=pairs,
        selection=sel,
        retain_blocks=blocks,
        loss_span="secret",
        probe=ExposureProbe(canaries, seed=cfg.reference_seed + 1),
    )
    return task, spec


def _resolve(name: str) -> tuple[Callable | None, str, bool]:
    """(function, where it came from, lora?) for a row name; function None when not available."""
    lora = name.endswith(LORA_SUFFIX)
    base = name[: -len(LORA_SUFFIX)] if lora else name
    if base in BASELINES:
        return BASELINES[base], f"eval.baselines.{base}", lora
    key = _registry_key(base)
    if key is not None:
        return METHODS[key], f"scrubber.updates.METHODS[{key!r}]", lora
    return None, f"{base!r} is not registered in scrubber.updates.METHODS", lora


def run_benchmark(cfg: BenchConfig) -> dict:
    log = cfg.log or (lambda _m: None)
    torch.set_num_threads(cfg.threads)
    load_start = os.getloadavg()
    t_all = time.perf_counter()
    cache_dir = cfg.cache_dir or default_cache_dir()

    demo_cached = (cache_dir / f"demo-{cfg.spec.key()}" / "model" / "config.json").exists()
    log(f"demo model: {'cached' if demo_cached else 'training'} ({cache_dir})")
    t0 = time.perf_counter()
    art = build_demo(cfg.spec, cache_dir)
    demo_seconds = time.perf_counter() - t0
    loaded = load_model(art.model_dir)
    base_model, tok = loaded.model.eval(), loaded.tokenizer
    canaries = list(art.canaries)
    if not canaries:
        raise SystemExit("the demo spec has no canaries (with_canaries=False): nothing to scrub")
    heldout = load_texts(art.heldout_path)
    retain_texts = load_texts(art.retain_path)

    refs = {c.id: references_for(c, cfg.references, seed=cfg.reference_seed) for c in canaries}
    log(f"exposure before ({len(canaries)} canaries, {cfg.references} references each)")
    before = measure(base_model, tok, canaries, refs, heldout, cfg)

    # As in the demo: the vocabulary holds the most repeated secrets as whole tokens, which
    # no weight update (and not retraining either) can undo; drop them (ids kept) first, and
    # measure every row, retrain included, with the cleaned tokenizer.
    train_tok = tok
    tokenizer_note = None
    if cfg.drop_leaking_tokens:
        from scrubber.pipeline import drop_leaking_tokens
        from scrubber.tokenizer_scan import scan_tokenizer

        section = scan_tokenizer(tok, canaries)
        tokenizer_note = drop_leaking_tokens(loaded, section, heldout + retain_texts + [c.text for c in canaries])
        tok = loaded.tokenizer
        log(f"tokenizer: {tokenizer_note}")
    subs, _allow = make_substitutes(canaries, cfg.substitute, cfg.substitute_seed, loaded)
    pairs = [p for c in canaries for p in make_edit_pairs(c.id, c.documents or [c.text], c.secret, subs[c.id])]
    blocks = retain_blocks(loaded, retain_texts)
    baseline_cfg = cfg.baseline or BaselineConfig(lr=cfg.spec.lr)

    log("retrain without canaries: " + ("loading cache" if _retrain_cached(cfg, cache_dir) else "training"))
    rt = load_or_retrain(cfg.spec, train_tok, cache_dir)
    retrain_seconds = rt.seconds
    m = measure(rt.model, tok, canaries, refs, heldout, cfg)
    retrain_exp = m.exposures
    rows = [_row("retrain", m, before, retrain_exp, retrain_seconds, retrain_seconds,
                 source="eval.baselines.retrain", params="all (from scratch)",
                 cached=rt.cached, train_threads=rt.meta.get("torch_threads"),
                 train_load_avg=rt.meta.get("load_avg_before"))]
    del rt

    skipped: list[dict] = []
    for name in cfg.methods:
        if name == "retrain":
            continue
        fn, source, lora = _resolve(name)
        if fn is None:
            skipped.append({"method": name, "reason": source})
            log(f"skip {name}: {source}")
            continue
        log(f"run {name}")
        task, spec = _fresh_task(base_model, tok, canaries, pairs, blocks, lora, cfg)
        kwargs = {"config": baseline_cfg} if source.startswith("eval.baselines") else {}
        try:
            t0 = time.perf_counter()
            result = fn(task, replace(cfg.update), **kwargs)
            seconds = time.perf_counter() - t0
        except Exception as err:  # one broken method must not sink the benchmark
            skipped.append({"method": name, "reason": f"failed: {type(err).__name__}: {err}"})
            log(f"  {name} failed: {type(err).__name__}: {err}")
            continue
        m = measure(task.model, tok, canaries, refs, heldout, cfg)
        rows.append(_row(
            name, m, before, retrain_exp, seconds, retrain_seconds,
            source=source, params=spec, n_parameters_updated=task.selection.numel,
            steps=result.steps, tau=result.tau, damping=result.damping,
            gradient_residual=result.gradient_residual,
        ))
        log(f"  {name}: max exposure {rows[-1]['exposure_max']:.1f} bits, "
            f"{rows[-1]['extracted']} extracted, ppl {rows[-1]['perplexity_change_pct']:+.2f}%, {seconds:.1f}s")
        del task

    before_values = list(before.exposures.values())
    result = {
        "methods": rows,
        "before": {
            "exposure_median": statistics.median(before_values),
            "exposure_max": max(before_values),
            "extracted": len(before.extracted),
            "extracted_ids": before.extracted,
            "perplexity": before.perplexity,
            "canaries": before.exposures,
        },
        "skipped": skipped,
        "settings": {
            "quick": cfg.quick,
            "demo_spec": asdict(cfg.spec),
            "demo_key": cfg.spec.key(),
            "demo_cached": demo_cached,
            "demo_seconds": demo_seconds,
            "cache_dir": str(cache_dir),
            "canaries": [{"id": c.id, "format": c.format, "repetitions": c.repetitions,
                          "max_exposure": c.fmt.log2_size} for c in canaries],
            "exposure_method": "extrapolated",
            "n_references": cfg.references,
            "reference_seed": cfg.reference_seed,
            "substitute": cfg.substitute,
            "tokenizer_clean_up": tokenizer_note,
            "substitute_seed": cfg.substitute_seed,
            "within_bits": WITHIN_BITS,
            "update_settings": asdict(cfg.update),
            "baseline_config": baseline_cfg.to_dict(),
            "lora_rank": cfg.lora_rank,
            "retain_blocks": 0 if blocks is None else int(blocks.shape[0]),
            "heldout_texts": len(heldout),
            "retrain_seconds": retrain_seconds,
            "retrain_cached": rows[0]["cached"],
            "retrain_threads": rows[0]["train_threads"],
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_avg_start": list(load_start),
            "load_avg_end": list(os.getloadavg()),
            "total_seconds": time.perf_counter() - t_all,
            "torch": torch.__version__,
            "timing": "seconds = wall clock of the method call only; retrain = its training time "
                      "(recorded when it was trained, also when loaded from cache)",
        },
    }
    return result


def _retrain_cached(cfg: BenchConfig, cache_dir: Path) -> bool:
    from eval.baselines.retrain import retrain_dir

    return (retrain_dir(cfg.spec, cache_dir) / "meta.json").exists()


# ----------------------------------------------------------------------------- output


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown_table(result: dict) -> str:
    s = result["settings"]
    n = len(s["canaries"])
    b = result["before"]
    lines = [
        "| method | exposure after, median (bits) | max (bits) | still extracted | "
        "held-out ppl change | seconds | × retrain time | within 2 bits of retrain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| *before (original model)* | {b['exposure_median']:.1f} | {b['exposure_max']:.1f} | "
        f"{b['extracted']}/{n} | — | — | — | — |",
    ]
    for r in result["methods"]:
        frac = r["fraction_of_retrain"]
        within = r["within_2_bits_of_retrain"]
        lines.append(
            f"| {r['method']} | {r['exposure_median']:.1f} | {r['exposure_max']:.1f} | "
            f"{r['extracted']}/{n} | {r['perplexity_change_pct']:+.2f}% | {r['seconds']:.1f} | "
            f"{_f(frac, '.3f')} | {'—' if within is None else f'{within}/{n}'} |"
        )
    load = ", ".join(f"{x:.1f}" for x in s["load_avg_start"])
    load_end = ", ".join(f"{x:.1f}" for x in s["load_avg_end"])
    notes = [
        "",
        f"Demo `{s['demo_key']}` ({s['demo_spec']['n_layer']} layers × {s['demo_spec']['d_model']}, "
        f"{s['demo_spec']['epochs']} epochs), {n} canaries, extrapolated exposure against "
        f"{s['n_references']} references per canary (seed {s['reference_seed']}), the same for every row.",
        f"Timings: torch threads {s['torch_threads']} on {s['cpu_count']} CPUs, load average "
        f"{load} at start, {load_end} at end. Retrain: {s['retrain_seconds']:.0f} s of training "
        f"with {s['retrain_threads']} thread(s)"
        + (" (loaded from the cache; the time is the one recorded when it was trained)." if s["retrain_cached"]
           else " (trained in this run and cached for the next)."),
        f"'within 2 bits': canaries whose exposure after is within {s['within_bits']:g} bits of the retrained "
        "model's exposure for the same canary. Perplexity on the demo's held-out documents.",
    ]
    for sk in result["skipped"]:
        notes.append(f"Skipped `{sk['method']}`: {sk['reason']}.")
    return "\n".join(lines + notes) + "\n"


def write_outputs(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "benchmark.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "benchmark.md", markdown_table(result))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark_scrub", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 references per canary instead of 1000")
    p.add_argument("--out", type=Path, default=Path("benchmark-scrub"), help="where benchmark.json/.md go")
    p.add_argument("--cache-dir", type=Path, default=None, help="demo cache (default: SCRUBBER_CACHE or ~/.cache/scrubber)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machines)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(DEFAULT_METHODS)}")
    p.add_argument("--n-references", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="demo seed (selects the demo model)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    methods = DEFAULT_METHODS
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        if "retrain" not in methods:
            methods = ("retrain", *methods)  # every fraction is relative to it
    cfg = BenchConfig(
        spec=DemoSpec(seed=args.seed),
        cache_dir=args.cache_dir,
        out=args.out,
        quick=args.quick,
        n_references=args.n_references,
        threads=args.threads,
        methods=methods,
        log=lambda msg: print(f"[benchmark] {msg}", file=sys.stderr, flush=True),
    )
    result = run_benchmark(cfg)
    if cfg.out is not None:
        write_outputs(result, cfg.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
