"""Second order with CG, LiSSA and K-FAC side by side, and the certified lm_head mode, against clean twins.

    python -m eval.benchmark_second_order [--out DIR] [--checkpoints demo,llama] [--rows ...]

Two checkpoints, both scrubbed with the same settings in one run:

* **demo**: the cached demo (GPT-2 shaped, byte-level BPE, tied head) and its clean
  twin, loaded exactly as ``eval.benchmark_scrub`` loads them (same substitutes, same
  tokenizer clean-up, same data roles). The second-order defaults were chosen here.
* **llama** (held out: no default was chosen on it): a 2-layer Llama with an untied
  head and a SentencePiece-style tokenizer (``tests/tokenizer_families.py``'s
  ``sp_llama``), trained in this benchmark on another split of the stdlib docs
  (``corpus_split(seed=1)``) with canaries of other phrasings injected 32/8/1 times,
  and its clean twin (the same recipe on the corpus with every secret replaced by the
  substitute the methods use). Both are cached under ``<cache>/heldout-llama-<key>``.

Per row: each canary's exposure after (extrapolated, fixed references) and its
difference from the twin's, the non-member test, greedy extraction, bits per byte
on the *evaluation* role (held-out documents no method reads: retain text is
training documents; steps and stopping read only the probe's own references and the
retain/tune text), and the wall time of the whole method call.

Rows: ``second-order/cg``, ``/lissa``, ``/kfac`` (UpdateSettings.newton_steps Newton
steps, default 3), ``second-order/cg-1step`` (one Newton step: the old behaviour),
``certified-head`` (refused on the tied demo head, with its reason).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from canaries import Canary, dump_canaries, load_canaries
from canaries.inject import inject, make_canaries
from scrubber.demo.build import DemoSpec, build_demo, corpus_split, default_cache_dir, settings_key
from scrubber.edits import METHODS, UpdateSettings
from scrubber.edits.objective import make_edit_pairs
from scrubber.edits.params import select_parameters
from scrubber.edits.task import ExposureProbe, UpdateTask
from scrubber.io.atomic import atomic_dir, write_text_atomic
from scrubber.io.checkpoint import load_model
from scrubber.measure.exposure.engine import references_for
from scrubber.measure.nonmember import nonmember_strings
from scrubber.pipeline import make_substitutes, retain_blocks

from eval.baselines import load_or_train_twin
from eval.baselines.cost import count_tokens
from eval.benchmark_scrub import BenchConfig, _row, data_roles, measure

ROWS: dict[str, tuple[str, dict]] = {
    "second-order/cg": ("second-order", {"solver": "cg"}),
    "second-order/lissa": ("second-order", {"solver": "lissa"}),
    "second-order/kfac": ("second-order", {"solver": "kfac"}),
    "second-order/cg-1step": ("second-order", {"solver": "cg", "newton_steps": 1}),
    "certified-head": ("certified-head", {}),
}

LLAMA_PREFIXES = {"credit_card": "The refund went back to card number ", "password": "wifi login for the lab: "}
LLAMA_VERSION = 1


@dataclass(frozen=True)
class LlamaSpec:
    """The held-out checkpoint's recipe; its hash keys the cache."""

    seed: int = 1
    formats: tuple[str, ...] = ("credit_card", "password")
    repetitions: tuple[int, ...] = (32, 8, 1)
    tokenizer_family: str = "sp_llama"
    n_layer: int = 2
    d_model: int = 96
    n_head: int = 4
    epochs: int = 8
    block_size: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    heldout_fraction: float = 0.1
    version: int = LLAMA_VERSION

    def key(self) -> str:
        return settings_key(asdict(self))

    def demo_spec(self) -> DemoSpec:
        """The DemoSpec whose corpus split / data roles this checkpoint shares (seed, held-out fraction)."""
        return DemoSpec(seed=self.seed, heldout_fraction=self.heldout_fraction)


def _train_llama(spec: LlamaSpec, tok, texts: list[str]):
    from scrubber.training.model_factory import small_causal_lm
    from scrubber.training.train import TrainConfig, train_causal_lm

    eos = tok.eos_token_id
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    model = small_causal_lm(len(tok), arch="llama", n_layer=spec.n_layer, d_model=spec.d_model, n_head=spec.n_head,
                            n_positions=max(256, spec.block_size), bos_token_id=bos, eos_token_id=eos,
                            pad_token_id=pad, seed=spec.seed, attn_implementation="sdpa")
    cfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, block_size=spec.block_size, lr=spec.lr,
                      seed=spec.seed)
    stats = train_causal_lm(model, tok, texts, cfg)
    model.config._attn_implementation = "eager"
    return model.eval(), stats


def build_heldout_llama(spec: LlamaSpec, cache_dir: Path, log: Callable[[str], None]) -> tuple[Path, dict]:
    """Canary model and clean twin of the held-out Llama, trained once and cached."""
    root = cache_dir / f"heldout-llama-{spec.key()}"
    if (root / "meta.json").exists():
        return root, json.loads((root / "meta.json").read_text())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tokenizer_families  # the tests' tokenizer families: a SentencePiece-style Llama vocabulary

    tok = tokenizer_families.build(spec.tokenizer_family)
    train_docs, _ = corpus_split(spec.seed, spec.heldout_fraction)
    canaries = make_canaries(list(spec.formats), list(spec.repetitions), prefixes=LLAMA_PREFIXES, seed=spec.seed)
    corpus, _manifest = inject(list(train_docs), canaries, seed=spec.seed)
    subs, _ = make_substitutes(canaries, "random", 0, None)  # type: ignore[arg-type]  # random needs no model
    twin_corpus = list(corpus)
    for c in canaries:
        twin_corpus = [t.replace(c.secret, subs[c.id]) for t in twin_corpus]
    log(f"held-out llama: training canary model ({len(corpus)} documents)")
    model, stats = _train_llama(spec, tok, corpus)
    log(f"  trained in {stats.seconds:.0f}s; training the twin")
    twin, twin_stats = _train_llama(spec, tok, twin_corpus)
    meta = {"spec": asdict(spec), "canary_seconds": stats.seconds, "twin_seconds": twin_stats.seconds,
            "final_loss": stats.final_loss, "twin_final_loss": twin_stats.final_loss,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch_threads": torch.get_num_threads(),
            "substitutes": "random, seed 0 (scrubber.pipeline.make_substitutes)"}
    with atomic_dir(root) as tmp:
        for name, m in (("model", model), ("twin", twin)):
            m.save_pretrained(tmp / name, safe_serialization=True)
            tok.save_pretrained(tmp / name)
        dump_canaries(canaries, tmp / "canaries.jsonl")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root, meta


@dataclass
class Checkpoint:
    name: str
    loaded: object
    twin_model: object
    canaries: list[Canary]
    roles: object
    note: dict = field(default_factory=dict)


def demo_checkpoint(cache_dir: Path, bench: BenchConfig, log) -> Checkpoint:
    art = build_demo(bench.spec, cache_dir)
    loaded = load_model(art.model_dir)
    canaries = list(art.canaries)
    roles = data_roles(bench.spec)
    subs, _ = make_substitutes(canaries, bench.substitute, bench.substitute_seed, loaded)
    twin = load_or_train_twin(bench.spec, loaded.tokenizer, subs, cache_dir)
    note = {"demo_key": bench.spec.key(), "twin_cached": twin.cached, "twin_trained_at": twin.meta.get("trained_at")}
    if bench.drop_leaking_tokens:  # as eval.benchmark_scrub does, so the numbers are comparable
        from scrubber.pipeline import drop_leaking_tokens
        from scrubber.tokenizer_scan import scan_tokenizer

        note["tokenizer_clean_up"] = drop_leaking_tokens(
            loaded, scan_tokenizer(loaded.tokenizer, canaries),
            roles.evaluation + roles.validation + roles.retain + [c.text for c in canaries])
    return Checkpoint("demo", loaded, twin.model.eval(), canaries, roles, note)


def llama_checkpoint(cache_dir: Path, spec: LlamaSpec, log) -> Checkpoint:
    root, meta = build_heldout_llama(spec, cache_dir, log)
    loaded = load_model(root / "model")
    twin = load_model(root / "twin").model.eval()
    canaries = load_canaries(root / "canaries.jsonl")
    return Checkpoint("llama (held out)", loaded, twin, canaries, data_roles(spec.demo_spec()),
                      {"llama_key": spec.key(), **{k: v for k, v in meta.items() if k != "spec"}, "spec": meta["spec"]})


def run_checkpoint(ck: Checkpoint, rows: Sequence[str], bench: BenchConfig, base: UpdateSettings, log) -> dict:
    tok = ck.loaded.tokenizer
    model0 = ck.loaded.model.eval()
    canaries = ck.canaries
    subs, _ = make_substitutes(canaries, bench.substitute, bench.substitute_seed, ck.loaded)
    refs = {c.id: references_for(c, bench.references, seed=bench.reference_seed) for c in canaries}
    probe_refs = ExposureProbe(canaries, seed=bench.reference_seed + 1).references
    nonmembers = {c.id: nonmember_strings(c, bench.nonmembers, seed=bench.reference_seed, exclude=[
        *refs[c.id], *probe_refs[c.id], *subs.values(), *(o.secret for o in canaries)]) for c in canaries}
    pairs = [p for c in canaries for p in make_edit_pairs(c.id, c.documents or [c.text], c.secret, subs[c.id])]
    blocks = retain_blocks(ck.loaded, ck.roles.retain)
    tune = retain_blocks(ck.loaded, ck.roles.validation, max_blocks=16)
    log(f"[{ck.name}] measuring before and twin")
    before = measure(model0, tok, canaries, refs, nonmembers, ck.roles.evaluation, bench)
    gold = measure(ck.twin_model, tok, canaries, refs, nonmembers, ck.roles.evaluation, bench)
    label = "before (tokenizer cleaned)" if ck.note.get("tokenizer_clean_up") else "before"
    out_rows = [_row(label, before, before, gold.exposures, None, None),
                _row("twin (gold standard)", gold, before, gold.exposures, None, None)]
    out_rows[1]["bits_per_byte_change_pct"] = None  # the twin is another training run: not a cost
    skipped = []
    for name in rows:
        method, overrides = ROWS[name]
        settings = replace(base, **overrides)
        model = copy.deepcopy(model0)
        task = UpdateTask(model=model, tokenizer=tok, canaries=canaries, pairs=pairs,
                          selection=select_parameters(model, "all"), retain_blocks=blocks, tune_blocks=tune,
                          loss_span="secret", probe=ExposureProbe(canaries, seed=bench.reference_seed + 1))
        log(f"[{ck.name}] {name}")
        try:
            with count_tokens(model) as cost:
                t0 = time.perf_counter()
                result = METHODS[method](task, settings)
                seconds = time.perf_counter() - t0
        except ValueError as err:  # e.g. certified-head on a tied head: the refusal is the result
            skipped.append({"method": name, "reason": str(err)})
            log(f"  refused: {err}")
            continue
        m = measure(model, tok, canaries, refs, nonmembers, ck.roles.evaluation, bench)
        r = _row(name, m, before, gold.exposures, seconds, cost, settings=asdict(settings), steps=result.steps,
                 tau=result.tau, damping=result.damping, gradient_residual=result.gradient_residual,
                 details={k: v for k, v in result.extra.items() if isinstance(v, (int, float, str, bool))},
                 history=result.extra.get("history"))
        out_rows.append(r)
        log(f"  max exposure {r['exposure_max']:.1f} bits, |after−twin| max {r['fidelity_max_abs']:.1f}, "
            f"extracted {r['extracted']}, bpb {r['bits_per_byte_change_pct']:+.2f}%, {seconds:.1f}s")
        del task, model
    return {"checkpoint": ck.name, "rows": out_rows, "skipped": skipped, "note": ck.note,
            "canaries": [{"id": c.id, "format": c.format, "repetitions": c.repetitions,
                          "max_exposure": c.fmt.log2_size} for c in canaries],
            "data_roles": ck.roles.describe(), "retain_blocks": int(blocks.shape[0]),
            "tune_blocks": 0 if tune is None else int(tune.shape[0])}


def markdown(result: dict) -> str:
    lines = []
    for ck in result["checkpoints"]:
        ids = [c["id"] for c in ck["canaries"]]
        lines += [f"### {ck['checkpoint']}", "",
                  "| row | " + " | ".join(f"{i} after (twin)" for i in ids) +
                  " | max \\|after − twin\\| | non-members in/above/below | extracted | bits/byte change | seconds |",
                  "|---|" + "---:|" * (len(ids) + 5)]
        twin = ck["rows"][1]["canaries"]
        for r in ck["rows"]:
            cells = " | ".join(f"{r['canaries'][i]:.1f} ({twin[i]:.1f})" for i in ids)
            bpb = "—" if r["bits_per_byte_change_pct"] is None else f"{r['bits_per_byte_change_pct']:+.2f}%"
            sec = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append(f"| {r['method']} | {cells} | {r['fidelity_max_abs']:.1f} | {r['nonmember_inside']}/"
                         f"{r['nonmember_above']}/{r['nonmember_below']} | {r['extracted']}/{len(ids)} | {bpb} | {sec} |")
        for s in ck["skipped"]:
            lines.append(f"\n`{s['method']}` refused: {s['reason']}")
        lines.append("")
    s = result["settings"]
    lines.append(f"Settings: {json.dumps(s['update_settings'])}; {s['n_references']} references, "
                 f"{s['n_nonmembers']} non-members per canary; torch threads {s['torch_threads']}, "
                 f"load average {s['load_avg_start']} → {s['load_avg_end']}; whole run {s['total_seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark_second_order", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmark-second-order"))
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--checkpoints", default="demo,llama")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--n-references", type=int, default=200)
    p.add_argument("--n-nonmembers", type=int, default=199)
    p.add_argument("--newton-steps", type=int, default=UpdateSettings.newton_steps)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--curvature-blocks", type=int, default=None,
                   help="retain blocks for CG/LiSSA curvature products (default scrubber.edits.second_order.CURVATURE_BLOCKS)")
    args = p.parse_args(argv)
    so = importlib.import_module("scrubber.edits.second_order")  # the module (the package exports the function)

    if args.curvature_blocks:
        so.CURVATURE_BLOCKS = args.curvature_blocks
    torch.set_num_threads(args.threads)
    log = lambda m: print(f"[second-order] {m}", file=sys.stderr, flush=True)  # noqa: E731
    cache_dir = args.cache_dir or default_cache_dir()
    bench = BenchConfig(quick=True, n_references=args.n_references, n_nonmembers=args.n_nonmembers, out=None)
    base = UpdateSettings(newton_steps=args.newton_steps)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    load0, t0 = list(os.getloadavg()), time.perf_counter()
    checkpoints = []
    for name in [c.strip() for c in args.checkpoints.split(",") if c.strip()]:
        ck = demo_checkpoint(cache_dir, bench, log) if name == "demo" else llama_checkpoint(cache_dir, LlamaSpec(), log)
        checkpoints.append(run_checkpoint(ck, rows, bench, base, log))
    result = {"checkpoints": checkpoints, "settings": {
        "update_settings": asdict(base), "curvature_blocks": so.CURVATURE_BLOCKS, "kfac_blocks": so.KFAC_BLOCKS,
        "relative_damping": so.RELATIVE_DAMPING, "lissa_depth": so.LISSA_DEPTH, "n_references": bench.references, "n_nonmembers": bench.nonmembers,
        "reference_seed": bench.reference_seed, "probe_seed": bench.reference_seed + 1, "substitute": bench.substitute,
        "params": "all", "torch_threads": torch.get_num_threads(), "load_avg_start": load0,
        "load_avg_end": list(os.getloadavg()), "total_seconds": time.perf_counter() - t0, "torch": torch.__version__,
        "utility": "bits per byte on the evaluation role (held-out documents, even positions by length)",
        "tune_role": "validation documents (16 blocks): the utility bound inside the methods; never evaluation"}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "benchmark.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(args.out / "benchmark.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
