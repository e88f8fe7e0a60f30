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
from canaries.public_values import public_test_value
from canaries.substitutes import Allowlist, make_substitute
from scrubber.io.atomic import atomic_dir, check_output_dir
from scrubber.config import ScanConfig, ScrubConfig
from scrubber.io.data import DataRoles, assign_roles, load_texts
from scrubber.errors import ScrubberError
from scrubber.edits.objective import make_edit_pairs
from scrubber.measure.memorized import annotate_canaries
from scrubber.edits.localize import localize
from scrubber.edits.params import add_lora_adapter, existing_lora_adapter, select_parameters
from scrubber.measure.canary import measure_canaries, reference_sets
from scrubber.io.checkpoint import LoadedModel, load_model
from scrubber.progress import Progress, Silent
from scrubber.report import (
    CanaryReport,
    DataRole,
    DataRoles as DataRolesReport,
    Measurement,
    ModelInfo,
    NonMemberTest,
    RelearnCurveReport,
    Report,
    RippleReport,
    Robustness,
    ScrubInfo,
    Utility,
    compute_gate,
)

from scrubber.training.train import pack_texts
from scrubber.edits import METHODS, UpdateSettings
from scrubber.edits.task import ExposureProbe, UpdateTask
from scrubber.measure.utility import UtilityResult, document_utility
from scrubber.judge.verdict import scrub_verdict


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
        model_dir, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
        dtype=cfg.dtype, device_map=cfg.device_map,
    )
    device = resolve_device(cfg.device)
    if cfg.device_map is None:
        loaded.model.to(device)
    else:
        device = next(loaded.model.parameters()).device
    set_threads(cfg.threads, loaded.n_parameters, device)
    return Inputs(loaded, canaries, eval_texts)


SMALL_MODEL = 20_000_000


def set_threads(threads: int | None, n_parameters: int, device: torch.device) -> None:
    """One CPU thread for small models, and on machines of at most 2 cores, unless told otherwise.

    Small models' matrices are too small to split: on two cores, two threads measured up to
    15x slower than one when anything else ran (scoring 780 candidates on the demo model:
    18 s vs 1.2 s). On a 2-core machine a second thread buys at most 2x and loses far more
    under any contention: a 4-canary scan of SmolLM2-135M took 162 s with 2 threads and
    33 s with 1 at a load average of 6.7.
    """
    import os

    if threads is not None:
        torch.set_num_threads(threads)
    elif device.type == "cpu" and (n_parameters < SMALL_MODEL or (os.cpu_count() or 1) <= 2):
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
                public_test_value=public_test_value(c.secret),
            )
        )
    return out


def _utility(model, tokenizer, texts: Sequence[str] | None, cfg: ScanConfig,
             progress: Progress) -> UtilityResult | None:
    """Bits per byte and token perplexity on whole held-out documents (EOS not a target)."""
    if not texts:
        return None
    with progress.stage("held-out utility"):
        return document_utility(model, tokenizer, list(texts), max_tokens=cfg.max_eval_tokens)


def utility_section(before: UtilityResult | None, after: UtilityResult | None = None) -> Utility:
    def pct(a: float | None, b: float | None) -> float | None:
        return 100.0 * (b - a) / a if a and b is not None else None

    if before is None:
        return Utility()
    return Utility(
        perplexity_before=before.token_perplexity,
        perplexity_after=after.token_perplexity if after else None,
        perplexity_change_pct=pct(before.token_perplexity, after.token_perplexity) if after else None,
        eval_tokens=before.n_tokens,
        bits_per_byte_before=before.bits_per_byte,
        bits_per_byte_after=after.bits_per_byte if after else None,
        bits_per_byte_change_pct=pct(before.bits_per_byte, after.bits_per_byte) if after else None,
        eval_documents=before.n_documents,
        eval_bytes=before.n_bytes,
    )


def _measure(inputs: Inputs, cfg: ScanConfig, refs, progress: Progress, label: str) -> dict[str, Measurement]:
    with progress.stage(f"exposure {label}", total=len(inputs.canaries)) as advance:
        done = [0]

        def tick(_c: Canary) -> None:
            done[0] += 1
            advance(done[0], len(inputs.canaries))

        return measure_canaries(inputs.loaded, inputs.canaries, cfg, refs, on_canary=tick, progress=progress)


def _model_info(inputs: Inputs, cfg: ScanConfig) -> ModelInfo:
    loaded = inputs.loaded
    return ModelInfo(
        path=str(loaded.path),
        architecture=loaded.architecture,
        n_parameters=loaded.n_parameters,
        source_format=getattr(loaded, "source_format", "safetensors"),
        dequantized_from=getattr(loaded, "dequantized_from", None),
        dtype=cfg.dtype,
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
    utility = _utility(inputs.loaded.model, inputs.loaded.tokenizer, inputs.eval_texts, cfg, progress)
    report = Report(
        command="scan",
        model=_model_info(inputs, cfg),
        revealed=cfg.reveal,
        canaries=canary_reports(inputs.canaries, before, None, None, cfg.reveal),
        tokenizer=tokenizer_section(inputs.loaded, inputs.canaries, cfg, progress),
        utility=utility_section(utility),
    )
    return _gated(report, cfg)


def _gated(report: Report, cfg: ScanConfig) -> Report:
    """The gate, and each canary's ``memorized`` by the default rule (a discovery scan
    re-decides with its own rule and candidate count afterwards)."""
    annotate_canaries(report)
    if cfg.fail_above is not None:
        report.gate = compute_gate(report, cfg.fail_above, cfg.fail_on_tokenizer)
    return report


def make_substitutes(
    canaries: Sequence[Canary], strategy: str, seed: int, loaded: LoadedModel
) -> tuple[dict[str, str], Allowlist]:
    rng = random.Random(seed)
    allow = Allowlist()
    subs: dict[str, str] = {}
    for c in canaries:
        if strategy == "model":
            from scrubber.edits.substitutes import model_guided_substitute

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
    base = spec
    if spec == "auto":  # localise within what the update could move: the adapter the secret came in through, else all
        base = "lora" if loaded.is_peft and existing_lora_adapter(model) else "all"
    try:
        return select_parameters(model, base), spec
    except ValueError as err:
        raise ScrubberError(f"--params {cfg.params!r}: {err}") from None


def nonmember_sections(loaded: LoadedModel, canaries: Sequence[Canary], cfg: ScrubConfig,
                       exclude: dict[str, list[str]]) -> dict[str, NonMemberTest]:
    """Where each scrubbed secret sits among fresh random values of its format that no model
    or method saw (``exclude``: the references, the probe's and the substitutes)."""
    from scrubber.measure.nonmember import nonmember_strings, nonmember_test

    fresh = {c.id: nonmember_strings(c, cfg.n_nonmembers, cfg.seed, exclude=exclude.get(c.id, ()))
             for c in canaries}
    summary = nonmember_test(loaded.model, loaded.tokenizer, list(canaries), fresh,
                             alpha=cfg.nonmember_alpha, batch_size=cfg.batch_size)
    return {v.canary_id: NonMemberTest(
        verdict=v.verdict, n_nonmembers=v.n_nonmembers, quantile=v.fraction_more_likely, alpha=v.alpha,
        p_above=v.p_above, p_below=v.p_below,
        score_bits=v.secret_bits, nonmember_median_bits=v.nonmember_median_bits,
    ) for v in summary.verdicts}


def _inputs_with_roles(model_dir: Path, cfg: ScrubConfig, canaries: list[Canary] | None,
                       progress: Progress) -> tuple[Inputs, DataRoles]:
    """The model, canaries and text, with retain/tune/evaluation documents assigned (and said)."""
    _check_reference(cfg)
    retain_file = load_texts(cfg.retain_data) if cfg.retain_data else None
    inputs = load_inputs(model_dir, cfg, canaries)
    roles = assign_roles(inputs.eval_texts, cfg.eval_data, retain_file, cfg.retain_data)
    progress.log(f"data roles: {roles.rule}")
    return inputs, roles


def judge_scrubbed(loaded: LoadedModel, canaries: Sequence[Canary], reports: Sequence[CanaryReport],
                   refs: dict[str, list[str]], exclude: dict[str, list[str]], subs: dict[str, str],
                   retain: Sequence[str], cfg: ScrubConfig, progress: Progress, *,
                   relearn: bool) -> Robustness | None:
    """What a scrubbed model is judged by beyond exposure, for ``scrub`` and ``check-scrub`` alike:
    the non-member test, fidelity to --reference-model, and (``relearn``) the relearning probe."""
    with progress.stage("non-member test"):
        tests = nonmember_sections(loaded, canaries, cfg, exclude)
    for rep in reports:
        rep.nonmember = tests.get(rep.id)
    ref = load_reference(cfg, loaded)
    if ref is not None:
        add_fidelity(reports, Inputs(ref, list(canaries), None), cfg, refs, progress)
    return robustness_section(loaded, canaries, subs, retain, cfg, progress, ref) if relearn else None


def _check_reference(cfg: ScrubConfig) -> None:
    """A missing --reference-model is reported before minutes of work, not after."""
    if cfg.reference_model is not None and not Path(cfg.reference_model).exists():
        raise ScrubberError(f"--reference-model {cfg.reference_model}: not found")


def load_reference(cfg: ScrubConfig, like: LoadedModel) -> LoadedModel | None:
    """--reference-model (the clean twin or retrained model), on the scrubbed model's device."""
    if cfg.reference_model is None:
        return None
    ref = load_model(cfg.reference_model, allow_pickle=cfg.allow_pickle,
                     trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
    ref.model.to(next(like.model.parameters()).device)
    return ref


def add_fidelity(reports: Sequence[CanaryReport], ref: Inputs, cfg: ScanConfig, refs, progress: Progress) -> None:
    """Each canary's exposure in the reference model, and after − reference (the gold-standard gap)."""
    gold = _measure(ref, cfg, refs, progress, "reference model")
    for rep in reports:
        rep.reference = gold[rep.id]
        if rep.after is not None:
            rep.fidelity_bits = rep.after.exposure - gold[rep.id].exposure


def robustness_section(loaded: LoadedModel, canaries: Sequence[Canary], subs: dict[str, str],
                       retain: Sequence[str], cfg: ScrubConfig, progress: Progress,
                       ref: LoadedModel | None = None) -> Robustness:
    """The relearning probe on the scrubbed model (and on --reference-model), as a report section."""
    from scrubber.judge.robustness import RelearnSettings, relearn_probe, relearn_texts

    reference = (ref.model, ref.tokenizer) if ref is not None else None
    settings = RelearnSettings(steps=cfg.relearn_steps, lr=cfg.relearn_lr, seed=cfg.seed)
    texts = relearn_texts(canaries, subs, retain)
    with progress.stage("relearning probe", total=settings.steps) as advance:
        result = relearn_probe(loaded.model, loaded.tokenizer, canaries, texts, settings,
                               reference=reference, on_step=advance)
    bits = cfg.fail_on_relearn
    flagged = result.flagged(bits) if bits is not None else []
    return Robustness(
        steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size, block_size=settings.block_size,
        tokens=result.tokens, seconds=result.seconds,
        data=f"{len(texts) - len(retain)} canary documents with each secret replaced by its substitute, "
             f"plus {len(retain)} retain documents",
        reference_model=str(cfg.reference_model) if cfg.reference_model else None,
        fail_on_relearn=bits,
        curves=[RelearnCurveReport(
            canary_id=cid, steps=c.steps, exposures=c.exposures,
            reference_exposures=result.reference[cid].exposures if result.reference else None,
            regained=c.regained, excess=result.excess(cid), extracted_at_end=c.extracted_at_end,
            flagged=cid in flagged,
        ) for cid, c in result.curves.items()],
        flagged=flagged,
    )


def _ripple_inputs(inputs: Inputs, cfg: ScrubConfig) -> Inputs | None:
    """The --ripple-canaries on the same loaded model (so "after" sees the scrubbed weights)."""
    if cfg.ripple_canaries is None:
        return None
    try:
        others = load_canaries(cfg.ripple_canaries)
    except CanaryFileError as err:
        raise ScrubberError(str(err)) from None
    clash = {c.id for c in others} & {c.id for c in inputs.canaries}
    if clash:
        raise ScrubberError(f"--ripple-canaries repeats canary id(s) being scrubbed: {', '.join(sorted(clash))}")
    return Inputs(inputs.loaded, others, None)


def add_ripple(robustness: Robustness | None, before: dict[str, Measurement],
               after: dict[str, Measurement]) -> Robustness:
    from scrubber.judge.robustness import ripple_check

    rows = ripple_check({k: (m.exposure, m.ci_high) for k, m in before.items()},
                        {k: (m.exposure, m.ci_low) for k, m in after.items()})
    section = robustness or Robustness(steps=0, lr=0.0, batch_size=0, block_size=0, tokens=0, seconds=0.0,
                                       data="relearning probe not run (--robustness)")
    section.ripple = [RippleReport(canary_id=r.canary_id, before=r.before, after=r.after, rose=r.rose) for r in rows]
    return section


def data_roles_section(roles: DataRoles) -> DataRolesReport:
    return DataRolesReport(rule=roles.rule, roles=[
        DataRole(role=r.role, path=r.path, n_documents=len(r.documents), documents=r.documents,
                 n_documents_in_file=r.n_documents_in_file)
        for r in roles.sources
    ])


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


def _discovery_snapshot(loaded: LoadedModel, cfg: ScrubConfig, progress: Progress):
    """A short discovery scan for the ripple check (``--ripple-discovery``), else None."""
    if not cfg.ripple_discovery:
        return None
    from scrubber.judge.robustness import discovery_snapshot, ripple_scan_config

    return discovery_snapshot(loaded, ripple_scan_config(seed=cfg.seed, reveal=cfg.reveal), progress)


def _with_discovery_ripple(robustness: Robustness | None, before, loaded: LoadedModel, canaries: Sequence[Canary],
                           subs: dict[str, str], cfg: ScrubConfig, progress: Progress) -> Robustness | None:
    """Re-run the scan on the scrubbed model and report secrets that are new or rose (not the
    scrubbed ones, not their substitutes: the verdict judges those)."""
    if before is None:
        return robustness
    from scrubber.judge.robustness import attach_ripple_discovery, discovery_ripple

    after = _discovery_snapshot(loaded, cfg, progress)
    exclude = [*(c.secret for c in canaries), *subs.values()]
    return attach_ripple_discovery(robustness, discovery_ripple(before, after, exclude=exclude))


def scrub(model_dir: Path, cfg: ScrubConfig, progress: Progress | None = None,
          canaries: list[Canary] | None = None, command: str = "scrub",
          save: bool = True) -> ScrubOutcome:
    """Scrub, remeasure, and (unless ``save`` is False) write ``cfg.out`` atomically."""
    progress = progress or Silent()
    if save:
        if cfg.out is None:
            raise ScrubberError("no output directory given (--out DIR)")
        check_output_dir(cfg.out, inputs=(Path(model_dir),), force=cfg.force)
    inputs, roles = _inputs_with_roles(model_dir, cfg, canaries, progress)
    loaded = inputs.loaded
    refs = reference_sets(inputs.canaries, cfg)
    before = _measure(inputs, cfg, refs, progress, "before")
    util_before = _utility(loaded.model, loaded.tokenizer, roles.evaluation, cfg, progress)
    ripple = _ripple_inputs(inputs, cfg)
    ripple_before = _measure(ripple, cfg, reference_sets(ripple.canaries, cfg), progress, "others, before") \
        if ripple else None
    scan_before = _discovery_snapshot(loaded, cfg, progress)

    tok_before = tokenizer_section(loaded, inputs.canaries, cfg, progress)
    tok_removed = None
    if cfg.drop_leaking_tokens:
        check = roles.evaluation + roles.retain + roles.tune + [c.text for c in inputs.canaries]
        tok_removed = drop_leaking_tokens(loaded, tok_before, check)
    subs, allow = make_substitutes(inputs.canaries, cfg.substitute, cfg.seed, loaded)
    pairs = [
        p
        for c in inputs.canaries
        for p in make_edit_pairs(c.id, c.documents or [c.text], c.secret, subs[c.id])
    ]
    selection, spec = _selection(loaded, cfg)
    if cfg.gradient_checkpointing:
        if cfg.method == "second-order":
            raise ScrubberError("--gradient-checkpointing does not combine with second-order (it needs double backward)")
        base = loaded.model.get_base_model() if loaded.is_peft else loaded.model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    method = METHODS[cfg.method]
    settings = UpdateSettings(
        tau=cfg.tau,
        step_size=cfg.step_size,
        damping=cfg.damping,
        solver=cfg.solver,
        curvature=cfg.curvature,
        newton_steps=cfg.newton_steps,
        train_tokens=cfg.train_tokens,
        l2=cfg.l2,
        target_exposure=cfg.target_exposure,
        max_retain_increase=cfg.max_retain_increase,
        max_steps=cfg.max_steps,
        retain_weight=cfg.retain_weight,
    )
    total = cfg.max_steps if cfg.method == "iterative" else None
    with progress.stage(f"scrub ({cfg.method})", total=total) as advance:
        task = UpdateTask(
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            canaries=inputs.canaries,
            pairs=pairs,
            selection=selection,
            retain_blocks=retain_blocks(loaded, roles.retain),
            tune_blocks=retain_blocks(loaded, roles.tune, max_blocks=16),
            loss_span=cfg.loss_span,
            probe=ExposureProbe(inputs.canaries, seed=cfg.seed + 1),
            progress=advance,
            log=progress.log,
        )
        t0 = time.perf_counter()
        localized = None
        if spec == "auto":
            # one forget and one retain gradient at the starting weights: edit pairs and retain
            # text only, never evaluation text (docs/method.md, "Localisation")
            localized = localize(task, mass=cfg.localize_mass)
            task.selection = selection = localized.selection
            progress.log(localized.describe())
        result = method(task, settings)
        result.seconds = time.perf_counter() - t0  # the whole call, localisation and probes included
        if localized is not None:
            result.extra["localization"] = localized.to_dict()
    loaded.model.eval()
    if cfg.gradient_checkpointing:
        (loaded.model.get_base_model() if loaded.is_peft else loaded.model).gradient_checkpointing_disable()

    after = _measure(inputs, cfg, refs, progress, "after")
    util_after = _utility(loaded.model, loaded.tokenizer, roles.evaluation, cfg, progress)
    reports = canary_reports(inputs.canaries, before, after, subs, cfg.reveal)
    probe_refs = task.probe.references if task.probe is not None else {}
    exclude = {c.id: [*refs[c.id], *probe_refs.get(c.id, []), subs[c.id]] for c in inputs.canaries}
    robustness = judge_scrubbed(loaded, inputs.canaries, reports, refs, exclude, subs, roles.retain, cfg, progress,
                                relearn=cfg.robustness or cfg.fail_on_relearn is not None)
    if ripple is not None and ripple_before is not None:
        ripple_after = _measure(ripple, cfg, reference_sets(ripple.canaries, cfg), progress, "others, after")
        robustness = add_ripple(robustness, ripple_before, ripple_after)
    robustness = _with_discovery_ripple(robustness, scan_before, loaded, inputs.canaries, subs, cfg, progress)
    utility = utility_section(util_before, util_after)
    report = Report(
        command=command,
        model=_model_info(inputs, cfg),
        revealed=cfg.reveal,
        canaries=reports,
        tokenizer=(tokenizer_section(loaded, inputs.canaries, cfg, progress) if tok_removed else tok_before),
        utility=utility,
        scrub=ScrubInfo(
            method=result.method,
            seconds=result.seconds,
            params_selected=spec,
            n_parameters_updated=result.extra.get("n_parameters_updated", selection.numel),
            tau=result.tau,
            damping=result.damping,
            substitute_strategy="model-guided" if cfg.substitute == "model" else cfg.substitute,
            gradient_residual=result.gradient_residual,
            extra={k: v for k, v in result.extra.items() if k != "history"}
            | {"steps": result.steps, "tokenizer_tokens_dropped": tok_removed},
        ),
        verdict=scrub_verdict(
            reports, utility, target_exposure=cfg.target_exposure, utility_bound=cfg.max_retain_increase,
            tune_rise=result.extra.get("retain_rise"), allow_partial=cfg.allow_partial,
            relearned=robustness.flagged if robustness else (),
        ),
        data_roles=data_roles_section(roles),
        robustness=robustness,
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


def check_scrub(original_dir: Path, scrubbed_dir: Path, cfg: ScrubConfig,
                progress: Progress | None = None) -> Report:
    """Judge a scrub after the fact: exposure in the original vs the scrubbed model (same
    references), held-out utility of both, the non-member test and the relearning probe on the
    scrubbed model (and on --reference-model). Nothing is written but the report."""
    progress = progress or Silent()
    original, roles = _inputs_with_roles(original_dir, cfg, None, progress)
    refs = reference_sets(original.canaries, cfg)
    before = _measure(original, cfg, refs, progress, "original")
    util_before = _utility(original.loaded.model, original.loaded.tokenizer, roles.evaluation, cfg, progress)
    scan_before = _discovery_snapshot(original.loaded, cfg, progress)
    del original.loaded.model
    scrubbed = load_inputs(scrubbed_dir, cfg, original.canaries)
    after = _measure(scrubbed, cfg, refs, progress, "scrubbed")
    util_after = _utility(scrubbed.loaded.model, scrubbed.loaded.tokenizer, roles.evaluation, cfg, progress)
    subs, _ = make_substitutes(scrubbed.canaries, "random", cfg.seed, scrubbed.loaded)
    reports = canary_reports(scrubbed.canaries, before, after, None, cfg.reveal)
    exclude = {c.id: [*refs[c.id], subs[c.id]] for c in scrubbed.canaries}
    robustness = judge_scrubbed(scrubbed.loaded, scrubbed.canaries, reports, refs, exclude, subs, roles.retain, cfg,
                                progress, relearn=True)
    robustness = _with_discovery_ripple(robustness, scan_before, scrubbed.loaded, scrubbed.canaries, subs, cfg, progress)
    assert robustness is not None
    utility = utility_section(util_before, util_after)
    report = Report(
        command="check-scrub",
        model=_model_info(scrubbed, cfg),
        revealed=cfg.reveal,
        canaries=reports,
        utility=utility,
        verdict=scrub_verdict(reports, utility, target_exposure=cfg.target_exposure,
                              utility_bound=cfg.max_retain_increase, allow_partial=cfg.allow_partial,
                              relearned=robustness.flagged),
        data_roles=data_roles_section(roles),
        robustness=robustness,
    )
    return _gated(report, cfg)


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
