"""``scrubber demo``: build or load the demo model, scrub it, and leave everything in --out."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from scrubber.io.atomic import atomic_dir
from scrubber.config import DemoConfig
from scrubber.demo.build import DemoSpec, build_demo
from scrubber.errors import ScrubberError
from scrubber.pipeline import save_scrubbed, scrub
from scrubber.progress import Progress, Silent
from scrubber.report import Report, write_reports

MARKER = ".scrubber-demo"


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists() and not force)):
        raise ScrubberError(f"{out} exists and is not a scrubber demo directory; choose another --out or pass --force")


def run_demo(cfg: DemoConfig, progress: Progress | None = None) -> Report:
    progress = progress or Silent()
    out = Path(cfg.out or "scrubber-demo")
    _check_out(out, cfg.force)
    if cfg.quick:
        epochs = cfg.epochs if "epochs" in cfg.model_fields_set else None
        spec = DemoSpec.quick(seed=cfg.seed, epochs=epochs)
    else:
        spec = DemoSpec(seed=cfg.seed, epochs=cfg.epochs)
    spec = dataclasses.replace(spec, grad_restriction_alpha=cfg.grad_restriction_alpha)
    state = {"stage": None, "cm": None, "adv": None}

    def on_progress(stage: str, done: int, total: int) -> None:
        if state["stage"] != stage:
            if state["cm"] is not None:
                state["cm"].__exit__(None, None, None)
            state["cm"] = progress.stage(f"demo: {stage}", total=total)
            state["adv"] = state["cm"].__enter__()
            state["stage"] = stage
        state["adv"](done, total)

    art = build_demo(spec, cfg.cache_dir, rebuild=cfg.rebuild, progress=on_progress)
    if state["cm"] is not None:
        state["cm"].__exit__(None, None, None)

    run_cfg = cfg.model_copy(update={
        "canaries": art.canaries_path,
        "eval_data": art.heldout_path,
        "retain_data": art.retain_path,
    })
    outcome = scrub(art.model_dir, run_cfg, progress, command="demo", save=False)
    outcome.report.model.path = str(out / "model")
    with atomic_dir(out) as tmp:
        (tmp / MARKER).write_text("written by scrubber demo\n", encoding="utf-8")
        shutil.copytree(art.model_dir, tmp / "model")
        shutil.copy(art.canaries_path, tmp / "canaries.jsonl")
        shutil.copy(art.heldout_path, tmp / "heldout.jsonl")
        shutil.copy(art.retain_path, tmp / "retain.jsonl")
        save_scrubbed(outcome, tmp / "scrubbed", art.model_dir)
        write_reports(outcome.report, tmp / "report", list(cfg.formats))
    if progress is not None:
        progress.log(f"demo output in {out}/ (model, scrubbed, canaries.jsonl, heldout.jsonl, retain.jsonl, report.*)")
    return outcome.report
