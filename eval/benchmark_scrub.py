"""Every scrub method and baseline on the same demo model, judged against its clean twin.

    python -m eval.benchmark_scrub [--quick] [--out DIR] [--threads N] [--methods a,b,...] [--no-relearn]

What each row reports, and why:

* **fidelity** ``max/mean |exposure after − exposure in the twin|`` per canary, bits.
  The gold standard (the *twin*) is the demo recipe retrained on D′: the same
  corpus with every secret replaced by the substitute the scrub methods use
  (:func:`eval.baselines.retrain.load_or_train_twin`), so it differs from the
  canary model only in the secrets. "Retrain without the canaries" is a second
  reference row. Neither is a utility target: the demo recipe's seed alone moves
  held-out bits per byte by 0.29 (1.52 vs 1.81, same canary corpus), so the
  bits-per-byte column compares each row with the model it started from.
* **non-member test** (:mod:`scrubber.measure.nonmember`): where each secret's score
  sits among fresh random members of its format no model saw; counts inside /
  above (under-scrubbed) / below (over-scrubbed), two-sided level 0.05.
* **bits per byte** on whole evaluation documents (:func:`scrubber.measure.utility.document_utility`).
* **relearning probe** (:mod:`scrubber.judge.robustness`, docs/robustness.md): a copy of each
  row's model fine-tuned for the scrub command's default budget (30 AdamW steps; 2 with
  ``--quick``) on cleaned data (canary documents with secrets → substitutes, plus retain text);
  *regained* = peak exposure under the probe − exposure at step 0, max and mean over canaries,
  next to the twin's under the same probe (probed once; same data, seed and references).
  ``--no-relearn`` skips it (the runtimes before the probe existed).
* extracted count (greedy decoding after the prefix), whole-call seconds
  (the method call including its own probes), token cost (forward + backward
  tokens through the model, :mod:`eval.baselines.cost`), and for tuned
  baselines the tuning grid's own seconds and tokens, reported separately.

**Data roles** (disjoint by construction, recorded in ``settings.data_roles``):
*retain* — 64 of the demo's training documents (as ``build_demo`` picks them),
the text every method's retain term and K-FAC's curvature use; *validation* —
held-out documents at odd positions when the held-out documents are sorted by
length (longest first), used only to pick each baseline's grid point; *evaluation*
— the held-out documents at even positions, used only for the reported bits
per byte. Stopping and step sizes of scrubber's methods read the exposure probe
(its own references, seed + 1) and the retain text, never held-out text.
Exposure is measured with references of seed ``reference_seed``; non-members are
drawn from their own stream and exclude those references, the probe's, the
secrets and the substitutes.

**Tuning** (the same small budget for every baseline): a grid over learning
rate × epochs (``keep_mass`` for the K-FAC edit, which has no steps); the
point kept is the one with the lowest maximum *probe* exposure among those whose
validation bits per byte rose at most ``MAX_VALIDATION_RISE``; if none does, the
smallest rise. The grid starts from open-unlearning's recipes (see ``_common``).

Prints the JSON result on stdout and writes ``DIR/benchmark.json`` and
``DIR/benchmark.md``. ``--quick``: 200 references and 199 non-members per canary
(1000/999 otherwise), a 2 × 2 grid (3 × 2 otherwise), no LoRA rows.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from canaries import Canary
from scrubber.io.atomic import write_text_atomic
from scrubber.demo.build import DemoSpec, build_demo, corpus_split, default_cache_dir
from scrubber.measure.exposure.engine import measure_exposure, references_for
from scrubber.measure.extraction import greedy_extracts
from scrubber.edits.objective import make_edit_pairs
from scrubber.edits.params import add_lora_adapter, select_parameters
from scrubber.io.checkpoint import load_model
from scrubber.measure.nonmember import NonmemberSummary, fidelity, nonmember_strings, nonmember_test
from scrubber.pipeline import make_substitutes, retain_blocks
from scrubber.edits import METHODS, UpdateSettings
from scrubber.edits.task import ExposureProbe, UpdateTask
from scrubber.measure.utility import UtilityResult, document_utility
from scrubber.judge.robustness import RelearnCurve, RelearnResult, RelearnSettings, relearn_probe, relearn_texts

from eval.baselines import BASELINES, BaselineConfig, load_or_retrain, load_or_train_twin
from eval.baselines.cost import TokenCost, count_tokens

MAX_VALIDATION_RISE = 0.02
"""A grid point is acceptable when validation bits per byte rose at most 2% (the scrub's own default bound)."""

OURS: tuple[str, ...] = ("iterative", "first_order", "iau", "second_order")
TUNED: tuple[str, ...] = ("gradient_ascent", "graddiff", "npo", "finetune", "balanced_subnet", "kfac_edit")
DEFAULT_METHODS: tuple[str, ...] = ("retrain_without_canaries", "no_op", "tokenizer_only", *OURS, *TUNED)
LORA_METHODS: tuple[str, ...] = ("first_order_lora", "iterative_lora")
LORA_SUFFIX = "_lora"


@dataclass
class BenchConfig:
    spec: DemoSpec = field(default_factory=DemoSpec)
    cache_dir: Path | None = None
    out: Path | None = Path("benchmark-scrub")
    quick: bool = False
    n_references: int | None = None
    """References per canary for exposure; default 1000, or 200 with ``quick``."""
    n_nonmembers: int | None = None
    """Non-members per canary; default 999, or 199 with ``quick``."""
    reference_seed: int = 0
    substitute: str = "random"
    substitute_seed: int = 0
    drop_leaking_tokens: bool = True
    threads: int = 1
    methods: tuple[str, ...] | None = None
    """None: DEFAULT_METHODS, plus LORA_METHODS unless quick."""
    lora_rank: int = 8
    max_eval_tokens: int = 100_000
    n_boot: int = 50
    update: UpdateSettings = field(default_factory=UpdateSettings)
    grid: dict[str, list[dict]] | None = None
    """Per baseline, the grid points (keyword overrides); None: :func:`default_grid`."""
    relearn: bool = True
    """Run the relearning probe (docs/robustness.md) on every row and on the twin; False: the old runtimes."""
    relearn_settings: RelearnSettings | None = None
    """None: the scrub command's default probe (30 steps), or a 2-step probe with ``quick``."""
    log: Callable[[str], None] | None = None

    @property
    def references(self) -> int:
        return self.n_references if self.n_references is not None else (200 if self.quick else 1000)

    @property
    def nonmembers(self) -> int:
        return self.n_nonmembers if self.n_nonmembers is not None else (199 if self.quick else 999)

    @property
    def relearn_probe_settings(self) -> RelearnSettings:
        if self.relearn_settings is not None:
            return self.relearn_settings
        return RelearnSettings(steps=2, every=1, n_references=100) if self.quick else RelearnSettings()

    def method_list(self) -> tuple[str, ...]:
        if self.methods is not None:
            return self.methods
        return DEFAULT_METHODS if self.quick else (*DEFAULT_METHODS, *LORA_METHODS)


def default_grid(spec: DemoSpec, quick: bool) -> dict[str, list[dict]]:
    """lr × epochs around the demo's own training rate (TOFU's convention: unlearn at the model's rate)."""
    lrs = [spec.lr / 10, spec.lr / 3] if quick else [spec.lr / 10, spec.lr / 3, spec.lr]
    epochs = [3, 10]
    grad = [{"lr": lr, "epochs": e} for lr in lrs for e in epochs]
    mask_lrs = [0.5, 2.0] if quick else [0.1, 0.5, 2.0]
    return {
        **{name: grad for name in ("gradient_ascent", "graddiff", "npo", "finetune")},
        "balanced_subnet": [{"lr": lr, "epochs": e, "batch_size": 4} for lr in mask_lrs for e in epochs],
        "kfac_edit": [{"keep_mass": k} for k in ((0.7, 0.9) if quick else (0.5, 0.7, 0.9, 0.97))],
    }


def _registry_key(name: str) -> str | None:
    for key in (name, name.replace("_", "-")):
        if key in METHODS:
            return key
    return None


# ----------------------------------------------------------------------------- data roles


@dataclass(frozen=True)
class DataRoles:
    retain: list[str]
    validation: list[str]
    evaluation: list[str]
    dropped_duplicates: int = 0
    """Held-out documents left out because the same text is also a training document."""

    def describe(self) -> dict:
        def info(docs: list[str]) -> dict:
            return {"documents": len(docs), "bytes": sum(len(d.encode("utf-8")) for d in docs),
                    "first_lines": [d.strip().splitlines()[0][:60] for d in docs]}

        return {"source": "pydoc_data.topics via scrubber.demo.build.corpus_split (whole documents)",
                "retain": {**info(self.retain), "from": "training documents (build_demo's retain sample)"},
                "validation": {**info(self.validation), "from": "held-out, odd positions by length"},
                "evaluation": {**info(self.evaluation), "from": "held-out, even positions by length"},
                "heldout_dropped_as_training_duplicates": self.dropped_duplicates}


def data_roles(spec: DemoSpec) -> DataRoles:
    """Retain from training documents; held-out documents split by document into validation/evaluation.

    ``pydoc_data.topics`` holds the same text under two keys; a held-out document that is
    verbatim a training document (one on the default demo) is not out of sample and is dropped.
    """
    train_docs, heldout = corpus_split(spec.seed, spec.heldout_fraction)
    retain = random.Random(spec.seed + 1).sample(train_docs, min(64, len(train_docs)))  # as build_demo
    seen = set(train_docs)
    fresh = [d for d in dict.fromkeys(heldout) if d not in seen]
    ordered = sorted(fresh, key=lambda d: (-len(d), d))
    evaluation, validation = ordered[0::2], ordered[1::2]
    if not validation:
        raise ValueError("held-out set has a single document: nothing to validate on")
    return DataRoles(retain, validation, evaluation, len(heldout) - len(fresh))


# ----------------------------------------------------------------------------- measurement


@dataclass
class Measured:
    exposures: dict[str, float]
    extracted: list[str]
    utility: UtilityResult
    nonmember: NonmemberSummary


def measure(model, tokenizer, canaries: Sequence[Canary], refs: dict[str, list[str]],
            nonmembers: dict[str, list[str]], docs: list[str], cfg: BenchConfig) -> Measured:
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
    util = document_utility(model, tokenizer, docs, max_tokens=cfg.max_eval_tokens)
    nm = nonmember_test(model, tokenizer, canaries, nonmembers)
    return Measured(exposures, extracted, util, nm)


def _pct(a: float, b: float) -> float:
    return 100.0 * (b - a) / a


def _row(method: str, m: Measured, before: Measured, gold: dict[str, float], seconds: float | None,
         cost: TokenCost | None, **extra: Any) -> dict:
    values = list(m.exposures.values())
    fid = fidelity(m.exposures, gold)
    return {
        "method": method,
        "fidelity_max_abs": fid.max_abs,
        "fidelity_mean_abs": fid.mean_abs,
        "nonmember_inside": m.nonmember.inside,
        "nonmember_above": m.nonmember.above,
        "nonmember_below": m.nonmember.below,
        "exposure_median": statistics.median(values),
        "exposure_max": max(values),
        "extracted": len(m.extracted),
        "extracted_ids": m.extracted,
        "bits_per_byte": m.utility.bits_per_byte,
        "bits_per_byte_change_pct": _pct(before.utility.bits_per_byte, m.utility.bits_per_byte),
        "token_perplexity": m.utility.token_perplexity,
        "seconds": seconds,
        "tokens": None if cost is None else cost.total,
        "token_cost": None if cost is None else cost.to_dict(),
        "canaries": dict(m.exposures),
        "fidelity": fid.differences,
        "nonmember": m.nonmember.to_dict(),
        **extra,
    }


def relearn_columns(res: RelearnResult, twin: dict[str, RelearnCurve]) -> dict:
    """A row's relearning probe judged against the twin's curves under the same probe (the twin is
    probed once per benchmark: same data, seed and references, so every row shares one yardstick)."""
    judged = RelearnResult(res.settings, res.curves, twin, res.seconds, res.tokens)
    sm = judged.summary()
    return {
        "relearn_regained_max": sm.regained_max, "relearn_regained_mean": sm.regained_mean,
        "twin_regained_max": sm.reference_regained_max, "twin_regained_mean": sm.reference_regained_mean,
        "relearn_excess_max": sm.excess_max, "relearn_peak_max": sm.peak_max,
        "relearn_extracted": len(sm.extracted_at_end), "relearn_extracted_ids": sm.extracted_at_end,
        "relearn_seconds": res.seconds, "relearn_tokens": res.tokens,
        "relearn_curves": {cid: c.exposures for cid, c in res.curves.items()},
    }


# ----------------------------------------------------------------------------- running methods


def _fresh_task(base_model, tokenizer, canaries, pairs, blocks, lora: bool, cfg: BenchConfig):
    model = copy.deepcopy(base_model)
    spec = "all"
    if lora:
        torch.manual_seed(cfg.reference_seed)
        model = add_lora_adapter(model, r=cfg.lora_rank)
        spec = "lora"
    task = UpdateTask(
        model=model, tokenizer=tokenizer, canaries=canaries, pairs=pairs,
        selection=select_parameters(model, spec), retain_blocks=blocks, loss_span="secret",
        probe=ExposureProbe(canaries, seed=cfg.reference_seed + 1),
    )  # fmt: skip
    return task, spec


def _call(fn, task, cfg: BenchConfig, **kwargs):
    """The whole method call, timed, with its forward/backward tokens counted."""
    with count_tokens(task.model) as cost:
        t0 = time.perf_counter()
        result = fn(task, replace(cfg.update), **kwargs)
        seconds = time.perf_counter() - t0
    return result, seconds, cost


def _baseline_kwargs(name: str, point: dict) -> dict:
    if name == "kfac_edit":
        return dict(point)
    return {"config": BaselineConfig(**point)}


def tune_baseline(name: str, make_task, grid: list[dict], validation: list[str], tok, cfg: BenchConfig,
                  val_before: float, log) -> tuple[Any, dict]:
    """Run every grid point; keep the best by the rule in the module doc (validation + probe only)."""
    trials, best, best_key = [], None, None
    t_tune, tune_cost = time.perf_counter(), TokenCost()
    for point in grid:
        task = make_task()
        result, seconds, cost = _call(BASELINES[name], task, cfg, **_baseline_kwargs(name, point))
        with count_tokens(task.model) as probe_cost:
            probe_max = max(task.exposures().values())
            val = document_utility(task.model, tok, validation, max_tokens=cfg.max_eval_tokens).bits_per_byte
        rise = (val - val_before) / val_before
        ok = math.isfinite(val) and rise <= MAX_VALIDATION_RISE
        key = (0, probe_max) if ok else (1, rise)
        trials.append({"point": point, "probe_exposure_max": probe_max, "validation_bpb": val,
                       "validation_rise_pct": 100 * rise, "acceptable": ok, "seconds": seconds, "tokens": cost.total})
        tune_cost.forward_tokens += cost.forward_tokens + probe_cost.forward_tokens
        tune_cost.backward_tokens += cost.backward_tokens + probe_cost.backward_tokens
        log(f"  {name} {point}: probe max {probe_max:.1f} bits, validation bpb {100 * rise:+.2f}%, {seconds:.1f}s")
        if best_key is None or key < best_key:
            best_key, best = key, (task, result, seconds, cost, point)
        else:
            del task
    return best, {"grid": trials, "tuning_seconds": time.perf_counter() - t_tune, "tuning_tokens": tune_cost.total}


def _resolve(name: str) -> tuple[Callable | None, str, bool]:
    lora = name.endswith(LORA_SUFFIX)
    base = name[: -len(LORA_SUFFIX)] if lora else name
    if base in BASELINES:
        return BASELINES[base], f"eval.baselines.{base}", lora
    key = _registry_key(base)
    if key is not None:
        return METHODS[key], f"scrubber.edits.METHODS[{key!r}]", lora
    return None, f"{base!r} is not registered in scrubber.edits.METHODS", lora


def _training_cost(outcome, spec: DemoSpec) -> TokenCost | None:
    """Tokens a from-scratch training spent when it ran in this run: steps × batch × block, forward and
    backward (the last batch of an epoch may be smaller: an upper bound by under one batch per epoch)."""
    if outcome.cached or not outcome.meta.get("steps"):
        return None
    n = int(outcome.meta["steps"]) * spec.batch_size * spec.block_size
    return TokenCost(forward_tokens=n, backward_tokens=n)


def _gold_info(outcome, what: str) -> dict:
    meta = outcome.meta
    return {"what": what, "cached": outcome.cached, "trained_at": meta.get("trained_at"),
            "train_seconds": outcome.seconds, "train_threads": meta.get("torch_threads"),
            "train_load_avg": meta.get("load_avg_before"), "steps": meta.get("steps")}


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
    roles = data_roles(cfg.spec)
    methods = cfg.method_list()
    grid = cfg.grid or default_grid(cfg.spec, cfg.quick)

    subs, _allow = make_substitutes(canaries, cfg.substitute, cfg.substitute_seed, loaded)
    refs = {c.id: references_for(c, cfg.references, seed=cfg.reference_seed) for c in canaries}
    probe_refs = ExposureProbe(canaries, seed=cfg.reference_seed + 1).references
    nonmembers = {
        c.id: nonmember_strings(c, cfg.nonmembers, seed=cfg.reference_seed, exclude=[
            *refs[c.id], *probe_refs[c.id], *subs.values(), *(o.secret for o in canaries)])
        for c in canaries
    }  # fmt: skip

    # The twin first: the yardstick every row is compared with, trained with the canary
    # model's own tokenizer (ids are what the clean-up keeps stable).
    log("clean twin (retrain on D′): " + "loading or training")
    twin = load_or_train_twin(cfg.spec, tok, subs, cache_dir)
    log(f"  twin {'cached ' + str(twin.meta.get('trained_at')) if twin.cached else f'trained in {twin.seconds:.0f}s'}")

    log(f"exposure before ({len(canaries)} canaries, {cfg.references} references each)")
    before = measure(base_model, tok, canaries, refs, nonmembers, roles.evaluation, cfg)
    val_before = document_utility(base_model, tok, roles.validation, max_tokens=cfg.max_eval_tokens).bits_per_byte

    tokenizer_note, orig_tok = None, tok
    if cfg.drop_leaking_tokens:
        from scrubber.pipeline import drop_leaking_tokens
        from scrubber.tokenizer_scan import scan_tokenizer

        section = scan_tokenizer(tok, canaries)
        tokenizer_note = drop_leaking_tokens(
            loaded, section, roles.evaluation + roles.validation + roles.retain + [c.text for c in canaries])
        tok = loaded.tokenizer
        log(f"tokenizer: {tokenizer_note}")
    pairs = [p for c in canaries for p in make_edit_pairs(c.id, c.documents or [c.text], c.secret, subs[c.id])]
    blocks = retain_blocks(loaded, roles.retain)

    gm = measure(twin.model, tok, canaries, refs, nonmembers, roles.evaluation, cfg)
    gold = gm.exposures
    rl = cfg.relearn_probe_settings
    relearn_data = relearn_texts(canaries, subs, roles.retain)
    twin_curves: dict[str, RelearnCurve] = {}
    twin_relearn: dict = {}
    if cfg.relearn:
        log(f"relearning probe on the twin ({rl.steps} steps at lr {rl.lr:g})")
        twin_res = relearn_probe(twin.model, tok, canaries, relearn_data, rl)
        twin_curves = twin_res.curves
        twin_relearn = relearn_columns(twin_res, twin_curves)

    def relearned(model, tokenizer=None) -> dict:
        if not cfg.relearn:
            return {}
        cols = relearn_columns(relearn_probe(model, tokenizer or tok, canaries, relearn_data, rl), twin_curves)
        log(f"  relearn: regained max {cols['relearn_regained_max']:.1f} mean {cols['relearn_regained_mean']:.1f} "
            f"bits (twin {cols['twin_regained_max']:.1f}/{cols['twin_regained_mean']:.1f}), "
            f"peak − twin peak max {cols['relearn_excess_max']:+.1f}, {cols['relearn_seconds']:.0f}s")
        return cols

    rows = [_row("twin (gold standard)", gm, before, gold, twin.seconds if not twin.cached else None,
                 _training_cost(twin, cfg.spec),
                 source="eval.baselines.retrain.load_or_train_twin", reference=_gold_info(twin, "retrain on D′"),
                 **twin_relearn)]
    del twin
    skipped: list[dict] = []

    for name in methods:
        log(f"run {name}")
        if name == "retrain_without_canaries":
            rt = load_or_retrain(cfg.spec, orig_tok, cache_dir)
            m = measure(rt.model, tok, canaries, refs, nonmembers, roles.evaluation, cfg)
            rows.append(_row(name, m, before, gold, rt.seconds if not rt.cached else None, _training_cost(rt, cfg.spec),
                             source="eval.baselines.retrain.load_or_retrain", reference=_gold_info(rt, "retrain without canaries"),
                             **relearned(rt.model)))
            continue
        if name in ("no_op", "tokenizer_only"):
            m = before if name == "no_op" else measure(base_model, tok, canaries, refs, nonmembers, roles.evaluation, cfg)
            rows.append(_row(name, m, before, gold, 0.0, TokenCost(), source="no weight change",
                             tokenizer="original" if name == "no_op" else "cleaned",
                             **relearned(base_model, orig_tok if name == "no_op" else tok)))
            continue
        fn, source, lora = _resolve(name)
        if fn is None:
            skipped.append({"method": name, "reason": source})
            log(f"skip {name}: {source}")
            continue
        base = name[: -len(LORA_SUFFIX)] if lora else name

        def make_task():
            return _fresh_task(base_model, tok, canaries, pairs, blocks, lora, cfg)[0]

        try:
            tuning: dict = {}
            if source.startswith("eval.baselines"):
                (task, result, seconds, cost, point), tuning = tune_baseline(
                    base, make_task, grid[base], roles.validation, tok, cfg, val_before, log)
                tuning["chosen"] = point
            else:
                task = make_task()
                result, seconds, cost = _call(fn, task, cfg)
        except Exception as err:  # one broken method must not sink the benchmark
            skipped.append({"method": name, "reason": f"failed: {type(err).__name__}: {err}"})
            log(f"  {name} failed: {type(err).__name__}: {err}")
            continue
        m = measure(task.model, tok, canaries, refs, nonmembers, roles.evaluation, cfg)
        rows.append(_row(
            name, m, before, gold, seconds, cost, source=source, params="lora" if lora else "all",
            n_parameters_updated=task.selection.numel, steps=result.steps, tau=result.tau,
            gradient_residual=result.gradient_residual, tuning=tuning or None,
            details={k: v for k, v in result.extra.items() if isinstance(v, (int, float, str, bool))},
            **relearned(task.model),
        ))  # details: e.g. balanced_subnet's weights_pruned, kfac_edit's components_kept
        r = rows[-1]
        log(f"  {name}: |after−twin| max {r['fidelity_max_abs']:.1f} mean {r['fidelity_mean_abs']:.1f} bits, "
            f"non-members {r['nonmember_inside']}/{r['nonmember_above']}/{r['nonmember_below']}, "
            f"bpb {r['bits_per_byte_change_pct']:+.2f}%, {seconds:.1f}s, {r['tokens']} tokens")
        del task

    before_values = list(before.exposures.values())
    return {
        "methods": rows,
        "before": {
            "exposure_median": statistics.median(before_values),
            "exposure_max": max(before_values),
            "extracted": len(before.extracted),
            "bits_per_byte": before.utility.bits_per_byte,
            "token_perplexity": before.utility.token_perplexity,
            "validation_bits_per_byte": val_before,
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
            "n_nonmembers": cfg.nonmembers,
            "nonmember_alpha": before.nonmember.alpha,
            "reference_seed": cfg.reference_seed,
            "probe_seed": cfg.reference_seed + 1,
            "substitute": cfg.substitute,
            "substitute_seed": cfg.substitute_seed,
            "tokenizer_clean_up": tokenizer_note,
            "data_roles": roles.describe(),
            "utility": {"metric": "bits per UTF-8 byte, whole documents, EOS not a target",
                        "eval_documents": before.utility.n_documents, "eval_bytes": before.utility.n_bytes,
                        "eval_tokens": before.utility.n_tokens},
            "max_validation_rise": MAX_VALIDATION_RISE,
            "grid": grid,
            "relearn": asdict(rl) if cfg.relearn else None,
            "relearn_data": {"canary_documents": len(relearn_data) - len(roles.retain),
                             "retain_documents": len(roles.retain),
                             "what": "each canary's documents with its secret replaced by its substitute, "
                                     "plus the retain documents (continued training on cleaned data)"},
            "update_settings": asdict(cfg.update),
            "lora_rank": cfg.lora_rank,
            "retain_blocks": 0 if blocks is None else int(blocks.shape[0]),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_avg_start": list(load_start),
            "load_avg_end": list(os.getloadavg()),
            "total_seconds": time.perf_counter() - t_all,
            "torch": torch.__version__,
            "timing": "seconds = wall clock of the whole method call, its own probes included; tuned "
                      "baselines: the chosen grid point's call (the grid's total is tuning_seconds); "
                      "gold rows: training seconds when trained in this run, '—' when loaded from the cache "
                      "(then reference.trained_at dates it)",
        },
    }


# ----------------------------------------------------------------------------- output


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown_table(result: dict) -> str:
    s = result["settings"]
    n = len(s["canaries"])
    b = result["before"]
    lines = [
        "| method | max \\|after − twin\\| (bits) | mean (bits) | non-members inside/above/below | "
        "max exposure (bits) | extracted | bits/byte change | seconds | tokens (fwd+bwd) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| *before (original model)* | — | — | — | {b['exposure_max']:.1f} | {b['extracted']}/{n} | "
        f"{b['bits_per_byte']:.3f} b/B | — | — |",
    ]
    for r in result["methods"]:
        tokens = "—" if r["tokens"] is None else f"{r['tokens']:,}"
        lines.append(
            f"| {r['method']} | {r['fidelity_max_abs']:.1f} | {r['fidelity_mean_abs']:.1f} | "
            f"{r['nonmember_inside']}/{r['nonmember_above']}/{r['nonmember_below']} | {r['exposure_max']:.1f} | "
            f"{r['extracted']}/{n} | {r['bits_per_byte_change_pct']:+.2f}% | {_f(r['seconds'], '.1f')} | {tokens} |"
        )
    load = ", ".join(f"{x:.1f}" for x in s["load_avg_start"])
    load_end = ", ".join(f"{x:.1f}" for x in s["load_avg_end"])
    roles = s["data_roles"]
    gold = result["methods"][0].get("reference", {})
    notes = [
        "",
        f"Demo `{s['demo_key']}`, {n} canaries; exposure extrapolated from {s['n_references']} references per "
        f"canary (seed {s['reference_seed']}); non-member test with {s['n_nonmembers']} fresh members per canary, "
        f"two-sided level {s['nonmember_alpha']:g} (about {s['nonmember_alpha'] * n:.1f} false flags expected "
        "per row of clean secrets).",
        "Gold standard: the demo recipe retrained on D′ (secrets → the methods' substitutes), "
        + ("loaded from the cache, trained " + str(gold.get("trained_at")) if gold.get("cached")
           else f"trained in this run ({gold.get('train_seconds', 0):.0f} s)") + ".",
        f"Bits per byte on {roles['evaluation']['documents']} whole evaluation documents "
        f"({roles['evaluation']['bytes']:,} bytes); baselines tuned on {roles['validation']['documents']} other "
        f"held-out documents; retain text: {roles['retain']['documents']} training documents.",
        f"Timings: torch threads {s['torch_threads']} on {s['cpu_count']} CPUs, load average {load} at start, "
        f"{load_end} at end; whole run {s['total_seconds'] / 60:.1f} min.",
    ]
    rl = s.get("relearn")
    if rl:
        lines_rl = [
            "",
            "| method | regained max (bits) | regained mean | twin regained max | twin mean | "
            "max (peak − twin peak) | extracted after probe | probe seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["methods"]:
            if "relearn_regained_max" not in r:
                continue
            lines_rl.append(
                f"| {r['method']} | {r['relearn_regained_max']:.1f} | {r['relearn_regained_mean']:.1f} | "
                f"{r['twin_regained_max']:.1f} | {r['twin_regained_mean']:.1f} | {r['relearn_excess_max']:+.1f} | "
                f"{r['relearn_extracted']}/{n} | {r['relearn_seconds']:.0f} |")
        d = s["relearn_data"]
        lines_rl.append(
            f"\nRelearning probe (docs/robustness.md): a copy of each row's model fine-tuned for {rl['steps']} AdamW "
            f"steps ({rl['batch_size']} blocks of {rl['block_size']} tokens, lr {rl['lr']:g}, all weights, LoRA "
            f"merged) on {d['canary_documents']} canary documents with each secret replaced by its substitute plus "
            f"{d['retain_documents']} retain documents; exposure every {rl['every']} steps against "
            f"{rl['n_references']} references of the probe's own seed. Regained = peak under the probe − exposure "
            "at step 0 (right after the scrub); the twin gets the same probe (same data, seed, references).")
        lines += lines_rl
    for r in result["methods"]:
        t = r.get("tuning")
        if t:
            notes.append(f"`{r['method']}` tuned over {len(t['grid'])} grid points in {t['tuning_seconds']:.0f} s "
                         f"({t['tuning_tokens']:,} tokens); chosen {t['chosen']}.")
    for sk in result["skipped"]:
        notes.append(f"Skipped `{sk['method']}`: {sk['reason']}.")
    return "\n".join(lines + notes) + "\n"


def write_outputs(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "benchmark.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "benchmark.md", markdown_table(result))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark_scrub", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 references, 199 non-members, 2×2 grid, no LoRA rows")
    p.add_argument("--out", type=Path, default=Path("benchmark-scrub"), help="where benchmark.json/.md go")
    p.add_argument("--cache-dir", type=Path, default=None, help="demo cache (default: SCRUBBER_CACHE or ~/.cache/scrubber)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machines)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(DEFAULT_METHODS + LORA_METHODS)}")
    p.add_argument("--n-references", type=int, default=None)
    p.add_argument("--no-relearn", action="store_true", help="skip the relearning probe (the old runtimes)")
    p.add_argument("--relearn-steps", type=int, default=None,
                   help="probe steps (default 30, or 2 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="demo seed (selects the demo model)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    methods = None
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    cfg = BenchConfig(
        spec=DemoSpec(seed=args.seed), cache_dir=args.cache_dir, out=args.out, quick=args.quick,
        n_references=args.n_references, threads=args.threads, methods=methods, relearn=not args.no_relearn,
        relearn_settings=None if args.relearn_steps is None else RelearnSettings(
            steps=args.relearn_steps, every=max(1, min(5, args.relearn_steps))),
        log=lambda msg: print(f"[benchmark] {msg}", file=sys.stderr, flush=True),
    )  # fmt: skip
    result = run_benchmark(cfg)
    if cfg.out is not None:
        write_outputs(result, cfg.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
