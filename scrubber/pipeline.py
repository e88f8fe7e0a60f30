"""The pipeline: canaries → exposure before → substitutes → update → exposure after → report.

Each stage is a function over typed objects; the CLI only parses options and
prints. Nothing here writes outside the output directory, and the input
checkpoint is only ever read.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from canaries import Canary, CanaryFileError, load_canaries
from canaries.mask import mask_secret
from canaries.substitutes import Allowlist, make_substitute
from scrubber.atomic import atomic_dir, check_output_dir
from scrubber.config import ScanConfig, ScrubConfig
from scrubber.data import load_texts
from scrubber.errors import ScrubberError
from scrubber.influence.objective import make_edit_pairs
from scrubber.influence.params import add_lora_adapter, existing_lora_adapter, select_parameters
from scrubber.measure import measure_canaries, reference_sets
from scrubber.models import LoadedModel, load_model
from scrubber.progress import Progress, Silent
from scrubber.report import (
    CanaryReport,
    Measurement,
    ModelInfo,
    Report,
    ScrubInfo,
    Utility,
    compute_gate,
)
from scrubber.training.train import pack_texts
from scrubber.updates import METHODS, UpdateSettings
from scrubber.updates.task import ExposureProbe, UpdateTask
from scrubber.utility import perplexity


@dataclass
class Inputs:
    loaded: LoadedModel
    canaries: list[Canary]
    eval_texts: list[str] | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ScrubberError(f"unknown device {name!r}") from None


def load_inputs(model_dir: Path, cfg: ScanConfig, canaries: list[Canary] | None = None) -> Inputs:
    """Validate everything cheap (canaries, eval data) before the expensive model load."""
    if canaries is None:
        if cfg.canaries is None:
            raise ScrubberError("no canary file given (--canaries FILE)")
        try:
            canaries = load_canaries(cfg.canaries)
        except CanaryFileError as err:
            raise ScrubberError(str(err)) from None
    eval_texts = load_texts(cfg.eval_data) if cfg.eval_data else None
    loaded = load_model(
        model_dir, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code
    )
    device = resolve_device(cfg.device)
    loaded.model.to(device)
    set_threads(cfg.threads, loaded.n_parameters, device)
    return Inputs(loaded, canaries, eval_texts)


SMALL_MODEL = 20_000_000


def set_threads(threads: int | None, n_parameters: int, device: torch.device) -> None:
    """One CPU thread for small models unless told otherwise.

    Their matrices are too small to split: on two cores, two threads measured
    up to 15x slower than one when anything else ran (scoring 780 candidates on
    the demo model: 18 s vs 1.2 s).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    elif device.type == "cpu" and n_parameters < SMALL_MODEL:
        torch.set_num_threads(1)


def _masked(value: str, canary: Canary, reveal: bool) -> str:
    return value if reveal else mask_secret(value, canary.fmt)


def canary_reports(
    canaries: Sequence[Canary],
    before: dict[str, Measurement],
    after: dict[str, Measurement] | None,
    substitutes: dict[str, str] | None,
    reveal: bool,
) -> list[CanaryReport]:
    out = []
    for c in canaries:
        sub = (substitutes or {}).get(c.id)
        out.append(
            CanaryReport(
                id=c.id,
                format=c.format,
                repetitions=c.repetitions,
                max_exposure=c.fmt.log2_size,
                secret=_masked(c.secret, c, reveal),
                prefix=c.prefix,
                before=before[c.id],
                after=(after or {}).get(c.id),
                substitute=_masked(sub, c, reveal) if sub else None,
            )
        )
    return out


def _utility(inputs: Inputs, cfg: ScanConfig, progress: Progress) -> tuple[float | None, int | None]:
    if not inputs.eval_texts:
        return None, None
    with progress.stage("held-out perplexity"):
        ppl, n = perplexity(
            inputs.loaded.model, inputs.loaded.tokenizer, inputs.eval_texts, max_tokens=cfg.max_eval_tokens
        )
    return ppl, n


def _measure(inputs: Inputs, cfg: ScanConfig, refs, progress: Progress, label: str) -> dict[str, Measurement]:
    with progress.stage(f"exposure {label}", total=len(inputs.canaries)) as advance:
        done = [0]

        def tick(_c: Canary) -> None:
            done[0] += 1
            advance(done[0], len(inputs.canaries))

        return measure_canaries(inputs.loaded, inputs.canaries, cfg, refs, on_canary=tick)


def _model_info(inputs: Inputs) -> ModelInfo:
    return ModelInfo(
        path=str(inputs.loaded.path),
        architecture=inputs.loaded.architecture,
        n_parameters=inputs.loaded.n_parameters,
    )


def tokenizer_section(loaded: LoadedModel, canaries: Sequence[Canary], cfg: ScanConfig, progress: Progress):
    """The vocabulary scan, or None (with a note) for tokenizers it cannot read."""
    if not cfg.tokenizer_scan:
        return None
    from scrubber.tokenizer_scan import TokenizerScanError, scan_tokenizer

    try:
        with progress.stage("tokenizer scan"):
            return scan_tokenizer(loaded.tokenizer, list(canaries) or None, reveal=cfg.reveal)
    except TokenizerScanError as err:
        progress.log(f"tokenizer scan skipped: {err}")
        return None


def drop_leaking_tokens(loaded: LoadedModel, section, check_texts: Sequence[str]) -> str | None:
    """Swap in a tokenizer without the flagged entries (ids stable); returns a summary."""
    import tempfile

    from transformers import AutoTokenizer

    from scrubber.tokenizer_scan import remove_tokens

    if section is None or not any(f.flagged for f in section.findings):
        return None
    with tempfile.TemporaryDirectory() as td:
        result = remove_tokens(loaded.tokenizer, section, td, check_texts=list(check_texts))
        if not result.ok:
            raise ScrubberError(f"token removal refused: {result.summary()}")
        loaded.tokenizer = AutoTokenizer.from_pretrained(td, local_files_only=True)
    if loaded.tokenizer.pad_token_id is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    return result.summary()


def scan(model_dir: Path, cfg: ScanConfig, progress: Progress | None = None,
         canaries: list[Canary] | None = None) -> Report:
    """Exposure report for known canaries."""
    progress = progress or Silent()
    inputs = load_inputs(model_dir, cfg, canaries)
    refs = reference_sets(inputs.canaries, cfg)
    before = _measure(inputs, cfg, refs, progress, "")
    ppl, n = _utility(inputs, cfg, progress)
    report = Report(
        command="scan",
        model=_model_info(inputs),
        revealed=cfg.reveal,
        canaries=canary_reports(inputs.canaries, before, None, None, cfg.reveal),
        tokenizer=tokenizer_section(inputs.loaded, inputs.canaries, cfg, progress),
        utility=Utility(perplexity_before=ppl, eval_tokens=n),
    )
    return _gated(report, cfg)


def _gated(report: Report, cfg: ScanConfig) -> Report:
    if cfg.fail_above is not None:
        report.gate = compute_gate(report, cfg.fail_above)
    return report


def make_substitutes(
    canaries: Sequence[Canary], strategy: str, seed: int, loaded: LoadedModel
) -> tuple[dict[str, str], Allowlist]:
    rng = random.Random(seed)
    allow = Allowlist()
    subs: dict[str, str] = {}
    for c in canaries:
        if strategy == "model":
            from scrubber.substitutes_model import model_guided_substitute

            sub = model_guided_substitute(loaded.model, loaded.tokenizer, c.prefix, c.secret, c.fmt, rng)
        else:
            sub = make_substitute(c.secret, c.fmt, strategy, rng)
        subs[c.id] = sub
        allow.add(sub, c.fmt)
    return subs, allow


def _selection(loaded: LoadedModel, cfg: ScrubConfig):
    model = loaded.model
    spec = cfg.params
    if cfg.lora:
        model = add_lora_adapter(model, r=cfg.lora_rank)
        loaded.model = model
        loaded.is_peft = True
        spec = "lora"
    elif loaded.is_peft and existing_lora_adapter(model) and spec == "all":
        spec = "lora"  # the secret came in through the adapter: scrub it there
    try:
        return select_parameters(model, spec), spec
    except ValueError as err:
        raise ScrubberError(f"--params {cfg.params!r}: {err}") from None


def retain_blocks(loaded: LoadedModel, texts: Sequence[str] | None, max_blocks: int = 64) -> torch.Tensor | None:
    if not texts:
        return None
    try:
        blocks = pack_texts(loaded.tokenizer, texts, 128)
    except ValueError:
        return None
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(blocks), generator=g)[:max_blocks]
    return blocks[idx].to(next(loaded.model.parameters()).device)


def scrub(model_dir: Path, cfg: ScrubConfig, progress: Progress | None = None,
          canaries: list[Canary] | None = None, command: str = "scrub",
          save: bool = True) -> ScrubOutcome:
    """Scrub, remeasure, and (unless ``save`` is False) write ``cfg.out`` atomically."""
    progress = progress or Silent()
    if save:
        if cfg.out is None:
            raise ScrubberError("no output directory given (--out DIR)")
        check_output_dir(cfg.out, inputs=(Path(model_dir),), force=cfg.force)
    retain_texts = load_texts(cfg.retain_data) if cfg.retain_data else None
    inputs = load_inputs(model_dir, cfg, canaries)
    retain_texts = retain_texts or inputs.eval_texts
    loaded = inputs.loaded
    refs = reference_sets(inputs.canaries, cfg)
    before = _measure(inputs, cfg, refs, progress, "before")
    ppl_before, n_eval = _utility(inputs, cfg, progress)

    tok_before = tokenizer_section(loaded, inputs.canaries, cfg, progress)
    tok_removed = None
    if cfg.drop_leaking_tokens:
        check = list(inputs.eval_texts or []) + list(retain_texts or []) + [c.text for c in inputs.canaries]
        tok_removed = drop_leaking_tokens(loaded, tok_before, check)
    subs, allow = make_substitutes(inputs.canaries, cfg.substitute, cfg.seed, loaded)
    pairs = [
        p
        for c in inputs.canaries
        for p in make_edit_pairs(c.id, c.documents or [c.text], c.secret, subs[c.id])
    ]
    selection, spec = _selection(loaded, cfg)
    method = METHODS[cfg.method]
    settings = UpdateSettings(
        tau=cfg.tau,
        damping=cfg.damping,
        target_exposure=cfg.target_exposure,
        max_retain_increase=cfg.max_retain_increase,
        max_steps=cfg.max_steps,
        retain_weight=cfg.retain_weight,
    )
    with progress.stage(f"scrub ({cfg.method})", total=cfg.max_steps) as advance:
        task = UpdateTask(
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            canaries=inputs.canaries,
            pairs=pairs,
            selection=selection,
            retain_blocks=retain_blocks(loaded, retain_texts),
            loss_span=cfg.loss_span,
            probe=ExposureProbe(inputs.canaries, seed=cfg.seed + 1),
            progress=advance,
        )
        t0 = time.perf_counter()
        result = method(task, settings)
        result.seconds = result.seconds or time.perf_counter() - t0
    loaded.model.eval()

    after = _measure(inputs, cfg, refs, progress, "after")
    ppl_after, _ = _utility(inputs, cfg, progress)
    change = 100.0 * (ppl_after - ppl_before) / ppl_before if ppl_before and ppl_after else None
    report = Report(
        command=command,
        model=_model_info(inputs),
        revealed=cfg.reveal,
        canaries=canary_reports(inputs.canaries, before, after, subs, cfg.reveal),
        tokenizer=(tokenizer_section(loaded, inputs.canaries, cfg, progress) if tok_removed else tok_before),
        utility=Utility(
            perplexity_before=ppl_before,
            perplexity_after=ppl_after,
            perplexity_change_pct=change,
            eval_tokens=n_eval,
        ),
        scrub=ScrubInfo(
            method=result.method,
            seconds=result.seconds,
            params_selected=spec,
            n_parameters_updated=selection.numel,
            tau=result.tau,
            damping=result.damping,
            substitute_strategy="model-guided" if cfg.substitute == "model" else cfg.substitute,
            gradient_residual=result.gradient_residual,
            extra={k: v for k, v in result.extra.items() if k != "history"}
            | {"steps": result.steps, "tokenizer_tokens_dropped": tok_removed},
        ),
    )
    outcome = ScrubOutcome(_gated(report, cfg), loaded, allow)
    if save:
        assert cfg.out is not None
        with atomic_dir(cfg.out) as tmp:
            save_scrubbed(outcome, tmp, Path(model_dir), merge_lora=cfg.merge_lora)
            if cfg.report is None:
                from scrubber.report import write_reports

                write_reports(outcome.report, tmp / "report", list(cfg.formats))
    return outcome


@dataclass
class ScrubOutcome:
    report: Report
    loaded: LoadedModel
    allowlist: Allowlist


def save_scrubbed(outcome: ScrubOutcome, out: Path, model_dir: Path, *, merge_lora: bool = False) -> None:
    """The scrubbed checkpoint (or LoRA adapter), its tokenizer and the substitute allowlist."""
    loaded = outcome.loaded
    model = loaded.model
    if loaded.is_peft and merge_lora:
        model = model.merge_and_unload()
    elif loaded.is_peft:
        base_dir = Path(model_dir).resolve()
        if (base_dir / "adapter_config.json").exists():  # input was itself an adapter
            base_dir = Path(model.peft_config[model.active_adapter].base_model_name_or_path)
        model.peft_config[model.active_adapter].base_model_name_or_path = str(base_dir)
    model.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    outcome.allowlist.save(out)
