"""The ``scrubber`` command line.

Exit codes: 0 success; 1 the CI gate failed (--fail-above); 2 bad input or
error (a one-line message on stderr, never a traceback, nothing written).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from scrubber.errors import ScrubberError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find, measure and remove memorized secrets in Hugging Face causal LMs.",
)

# Options shared by several commands. None means "not given": YAML or the default applies.
ConfigOpt = typer.Option(None, "--config", help="YAML file whose keys mirror these options.")
CanariesOpt = typer.Option(None, "--canaries", help="Canary file (JSON Lines: id, prefix, secret, format, ...).")
EvalOpt = typer.Option(None, "--eval-data", help="Held-out text for perplexity: .txt, .jsonl (text field) or a saved datasets dir.")
ReportOpt = typer.Option(None, "--report", help="Report path: out/scan.json is written as given (format from the extension); a bare base writes BASE.json, BASE.md, ...")
FormatOpt = typer.Option(None, "--format", help="Report format(s): json, md, html, sarif (repeatable).")
RevealOpt = typer.Option(None, "--reveal/--no-reveal", help="Show secrets unmasked in reports.")
FailOpt = typer.Option(None, "--fail-above", help="CI gate: exit 1 if any exposure exceeds BITS.")
ExpMethodOpt = typer.Option(None, "--exposure-method", help="auto, exact, search, extrapolated or interpolated.")
NRefOpt = typer.Option(None, "--n-references", help="Format-random references per canary (default 1000).")
SeedOpt = typer.Option(None, "--seed", help="Seed for references and substitutes.")
PickleOpt = typer.Option(None, "--allow-pickle/--no-allow-pickle", help="Allow pickle weights (can run code).")
RemoteOpt = typer.Option(None, "--trust-remote-code/--no-trust-remote-code", help="Allow custom model code.")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1, ...")
DeviceMapOpt = typer.Option(None, "--device-map", help="auto: spread a model larger than one device over the devices (accelerate).")
DTypeOpt = typer.Option(None, "--dtype", help="float32 (default), bfloat16 or float16 for loading, scoring and updates.")
ExpSecondsOpt = typer.Option(
    None, "--exposure-seconds", help="Time budget per canary for exposure, seconds (default 10; beyond it: extrapolated, reason in the report).")
AdaptiveOpt = typer.Option(
    None, "--adaptive-references/--all-references",
    help="Stop scoring references once the interval is decisive (default), or always score --n-references.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for torch (default: 1 below 20M parameters).")
TokScanOpt = typer.Option(None, "--tokenizer-scan/--no-tokenizer-scan", help="Scan the vocabulary for secret pieces (default on).")
RobustOpt = typer.Option(
    None, "--robustness/--no-robustness",
    help="After the scrub, fine-tune a copy briefly on cleaned data and re-measure (relearning probe).")
RelearnStepsOpt = typer.Option(None, "--relearn-steps", help="Steps of the relearning probe (default 30).")
RelearnLrOpt = typer.Option(None, "--relearn-lr", help="AdamW learning rate of the relearning probe (default 5e-4).")
ReferenceOpt = typer.Option(
    None, "--reference-model", help="Clean twin / retrained model: the relearning probe runs on it too.")
TargetOpt = typer.Option(None, "--target-exposure", help="Bits every canary should end at or below (default 3).")
AllowPartialOpt = typer.Option(
    None, "--allow-partial/--no-allow-partial",
    help="Exit 0 even when the scrub's verdict fails (the report still says so).")
RippleDiscoveryOpt = typer.Option(
    None, "--ripple-discovery/--no-ripple-discovery",
    help="A short discovery scan before and after: report secrets nobody listed that are new or rose.")
FailRelearnOpt = typer.Option(
    None, "--fail-on-relearn",
    help="Verdict fails when the probe lifts a canary more than BITS above the reference (implies --robustness).")
FailTokOpt = typer.Option(
    None, "--fail-on-tokenizer/--no-fail-on-tokenizer",
    help="With --fail-above, flagged tokenizer findings fail the gate too (default on).")


def _version(value: bool) -> None:
    if value:
        from scrubber.report.schema import tool_version

        typer.echo(f"scrubber {tool_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Find, measure and remove memorized secrets in Hugging Face causal LMs."""


def _run(fn: Callable[[], int]) -> None:
    """Turn every failure into one line on stderr and exit 2."""
    try:
        code = fn()
    except ScrubberError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except (ValueError, OSError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; nothing was written", err=True)
        raise typer.Exit(130) from None
    except Exception as err:  # last resort: still one line, still exit 2
        if os.environ.get("SCRUBBER_DEBUG"):
            raise
        typer.echo(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                   " (set SCRUBBER_DEBUG=1 for a traceback)", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _progress(quiet: bool):
    """Bars on a terminal, timestamped lines on a non-terminal stderr (CI logs), nothing with -q."""
    from scrubber.progress import make_progress

    return make_progress(quiet)


def _finish(report, cfg, default_base: Path | None, quiet: bool,
            summary: Callable[[], None] | None = None, extra: Callable[[], None] | None = None) -> int:
    """Write the reports, print the summary (``summary`` replaces the canary table,
    ``extra`` follows it), and turn the gate into the exit code."""
    from scrubber.report import write_reports
    from scrubber.report.gate import gate_messages
    from scrubber.report.summary import print_summary

    base = cfg.report or default_base
    if base is not None:
        try:
            paths = write_reports(report, Path(base), _report_formats(cfg))
        except ValueError as err:
            raise ScrubberError(str(err)) from None
        if not quiet:
            for p in paths.values():
                typer.echo(f"wrote {p}", err=True)
    verdict = getattr(report, "verdict", None)
    if not quiet:
        if summary is not None:
            summary()
            if report.gate is not None:
                typer.echo(f"gate (--fail-above {report.gate.fail_above}): "
                           f"{'FAILED' if report.gate.failed else 'passed'}")
        else:
            print_summary(report)
        if extra is not None:
            extra()
    code = 0
    if report.gate is not None and report.gate.failed:
        for line in gate_messages(report.gate):
            typer.echo(line, err=True)
        code = 1
    if verdict is not None and not verdict.passed:
        if verdict.allow_partial:
            typer.echo(f"warning: scrub incomplete (--allow-partial): {verdict.summary}", err=True)
        else:
            typer.echo(f"scrub failed: {verdict.summary} (model written for inspection; "
                       "--allow-partial to exit 0)", err=True)
            code = 1
    return code


def _report_formats(cfg) -> list[str] | None:
    """The formats the user asked for; None lets ``--report``'s extension decide."""
    return list(cfg.formats) if "formats" in cfg.model_fields_set or cfg.report is None else None


def _check_report(cfg) -> None:
    """Refuse a bad --report before any model work, not after minutes of it."""
    from scrubber.report.write import check_formats, report_paths

    try:
        check_formats(cfg.formats)
        if cfg.report is not None:
            report_paths(Path(cfg.report), _report_formats(cfg))
    except ValueError as err:
        raise ScrubberError(str(err)) from None


def _overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
def scan(
    model_dir: Path = typer.Argument(..., help="Local checkpoint directory (save_pretrained)."),
    canaries: Optional[Path] = CanariesOpt,
    discover: Optional[bool] = typer.Option(
        None, "--discover/--no-discover",
        help="With --canaries, also run discovery (without --canaries discovery always runs)."),
    emit_canaries: Optional[Path] = typer.Option(
        None, "--emit-canaries",
        help="Write the memorized findings as a canary file for `scrubber scrub`. The file holds the "
             "secrets RAW (scrub needs them); it is created with mode 0600: keep it out of artifacts."),
    baits: Optional[list[str]] = typer.Option(
        None, "--bait", help="Extra bait prompt (repeatable; YAML key `baits` also takes {text, kind})."),
    default_baits: Optional[bool] = typer.Option(
        None, "--default-baits/--no-default-baits", help="Use the built-in bait prompts."),
    samples_per_bait: Optional[int] = typer.Option(None, "--samples-per-bait", help="Samples per bait (default 32)."),
    unconditional_samples: Optional[int] = typer.Option(
        None, "--unconditional-samples", help="Samples from the document-start token (default 64)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Top-k sampling (default 40; 0 = off)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (default 1.0)."),
    memorization_threshold: Optional[float] = typer.Option(
        None, "--memorization-threshold",
        help="Exposure (bits) that counts as memorized without greedy extraction (default 20); below it a value "
             "must be recited and significant at --false-alarm-rate (docs/scanning.md)."),
    false_alarm_rate: Optional[float] = typer.Option(
        None, "--false-alarm-rate", help="Family-wise false-alarm rate of the memorization rule over the scan (default 0.01)."),
    anchor_search: Optional[bool] = typer.Option(
        None, "--anchor-search/--no-anchor-search",
        help="Discovery: continue the model's own samples where it is about to emit a number or key (default on)."),
    anchor_top: Optional[int] = typer.Option(
        None, "--anchor-top", help="Discovery: anchors continued, strongest first (default 96)."),
    data: Optional[Path] = typer.Option(
        None, "--data",
        help="Training data to audit (streamed): .txt (documents split by blank lines), .jsonl (text field) or a "
             "saved datasets dir. Every secret the detectors find is measured after its real context; "
             "discovery then runs only with --discover."),
    format_spec: Optional[list[str]] = typer.Option(
        None, "--format-spec", help="With --data: also detect this format as a bare value, e.g. 'EMP-[0-9]{6}' or digits8 (repeatable)."),
    max_data_secrets: Optional[int] = typer.Option(
        None, "--max-data-secrets", help="With --data: distinct values measured at most, most frequent first (default 200)."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="With --data: text field of .jsonl records / dataset rows (default text)."),
    eval_data: Optional[Path] = EvalOpt,
    report: Optional[Path] = ReportOpt,
    format: Optional[list[str]] = FormatOpt,
    reveal: Optional[bool] = RevealOpt,
    fail_above: Optional[float] = FailOpt,
    exposure_method: Optional[str] = ExpMethodOpt,
    n_references: Optional[int] = NRefOpt,
    seed: Optional[int] = SeedOpt,
    allow_pickle: Optional[bool] = PickleOpt,
    trust_remote_code: Optional[bool] = RemoteOpt,
    device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DTypeOpt,
    device_map: Optional[str] = DeviceMapOpt,
    threads: Optional[int] = ThreadsOpt,
    tokenizer_scan: Optional[bool] = TokScanOpt,
    fail_on_tokenizer: Optional[bool] = FailTokOpt,
    exposure_seconds: Optional[float] = ExpSecondsOpt,
    adaptive_references: Optional[bool] = AdaptiveOpt,
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Find memorized secrets (discovery), measure known canaries (--canaries), or audit the training data (--data).

    Without --canaries or --data (or with --discover) the model is sampled from bait prompts and from the document start, secret-shaped values are detected (after baits, and where the model's own samples turn to a number or key), and each is judged by the memorization rule (docs/scanning.md). With --data every secret found in the data is measured after the text it followed there (docs/scanning.md). --format without --report writes ./report.<format>. Exit codes: 0 ok, 1 --fail-above exceeded, 2 bad input or error.
    """

    def go() -> int:
        from scrubber.discovery.data_audit import DataScanConfig
        from scrubber.discovery.scan import print_findings, scan_report, write_canary_file
        from scrubber.config import load_config

        cfg = load_config(DataScanConfig, config, _overrides(
            data=data, format_spec=format_spec, max_data_secrets=max_data_secrets, text_field=text_field,
            canaries=canaries, discover=discover, emit_canaries=emit_canaries,
            default_baits=default_baits, samples_per_bait=samples_per_bait,
            unconditional_samples=unconditional_samples, top_k=top_k, temperature=temperature,
            memorization_threshold=memorization_threshold, false_alarm_rate=false_alarm_rate,
            anchor_search=anchor_search, anchor_top=anchor_top,
            eval_data=eval_data, report=report, formats=format, reveal=reveal,
            fail_above=fail_above, exposure_method=exposure_method, n_references=n_references,
            seed=seed, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device,
            dtype=dtype, device_map=device_map, threads=threads, tokenizer_scan=tokenizer_scan,
            fail_on_tokenizer=fail_on_tokenizer,
            exposure_seconds=exposure_seconds, adaptive_references=adaptive_references,
        ))
        if baits:  # --bait extends the YAML list
            cfg.baits = [*cfg.baits, *baits]
        _check_report(cfg)
        if cfg.emit_canaries is not None and cfg.emit_canaries.is_dir():
            raise ScrubberError(f"--emit-canaries {cfg.emit_canaries}: is a directory")
        if cfg.data is not None:
            return _scan_data(model_dir, cfg, quiet, default_base=Path("report") if format else None)
        if cfg.format_spec or "max_data_secrets" in cfg.model_fields_set:
            raise ScrubberError("--format-spec and --max-data-secrets need --data")
        discovering = cfg.discover or cfg.canaries is None
        if cfg.emit_canaries is not None and not discovering:
            raise ScrubberError("--emit-canaries needs discovery or --data (drop --canaries, or add --discover or --data)")
        rep, result = scan_report(model_dir, cfg, _progress(quiet))
        if result is not None and cfg.emit_canaries is not None:
            emitted = result.memorized_canaries()
            write_canary_file(emitted, cfg.emit_canaries)
            if not quiet:
                typer.echo(f"wrote {len(emitted)} canaries (raw secrets, mode 0600) to {cfg.emit_canaries}",
                           err=True)
        default_base = Path("report") if format else None
        if rep.canaries or result is None:
            return _finish(rep, cfg, default_base, quiet, extra=lambda: print_findings(rep, cfg.memorization_threshold) if result else None)
        return _finish(rep, cfg, default_base, quiet, summary=lambda: print_findings(rep, cfg.memorization_threshold))

    _run(go)


def _scan_data(model_dir: Path, cfg, quiet: bool, default_base: Path | None) -> int:
    """``scan --data``: the data audit (with known canaries and, with --discover, discovery)."""
    from scrubber.discovery.data_audit import print_data_findings, scan_with_data
    from scrubber.discovery.scan import print_findings, write_canary_file

    progress = _progress(quiet)
    outcome = scan_with_data(model_dir, cfg, progress)
    rep = outcome.report
    if cfg.emit_canaries is not None:
        emitted = outcome.memorized_canaries(progress)
        if outcome.discovery is not None:
            emitted += outcome.discovery.memorized_canaries()
        write_canary_file(emitted, cfg.emit_canaries, full=True)  # full: the documents scrub edits
        if not quiet:
            typer.echo(f"wrote {len(emitted)} canaries (raw secrets and their records, mode 0600) "
                       f"to {cfg.emit_canaries}", err=True)

    def tables() -> None:
        print_data_findings(rep)
        if outcome.discovery is not None:
            print_findings(rep.model_copy(update={"findings": [f for f in rep.findings if f.source != "data"]}),
                           cfg.memorization_threshold)

    if rep.canaries:
        return _finish(rep, cfg, default_base, quiet, extra=tables)
    return _finish(rep, cfg, default_base, quiet, summary=tables)


@app.command()
def scrub(
    model_dir: Path = typer.Argument(..., help="Local checkpoint directory (never modified)."),
    canaries: Optional[Path] = CanariesOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the scrubbed model (created)."),
    eval_data: Optional[Path] = EvalOpt,
    retain_data: Optional[Path] = typer.Option(
        None, "--retain-data",
        help="Training-like text: 90% trains the retain term, 10% checks the utility bound (by document). "
             "Default: --eval-data split by document into evaluation, tune and retain parts."),
    method: Optional[str] = typer.Option(None, "--method", help="iterative (default), first-order, second-order, iau, certified-head (untied lm_head only, with a residual bound)."),
    tau: Optional[float] = typer.Option(
        None, "--tau", help="first-order, iau, second-order: multiplier of the update direction (default: chosen on the probe)."),
    step_size: Optional[float] = typer.Option(
        None, "--step-size", help="iterative: each step's norm relative to the weights' scale (default 2e-4)."),
    damping: Optional[float] = typer.Option(None, "--damping", help="second-order: damping lambda (default 1e-2 x the top curvature eigenvalue)."),
    solver: Optional[str] = typer.Option(
        None, "--solver", help="second-order: cg (default), lissa, or kfac (EK-FAC factors fitted once on the retain text)."),
    curvature: Optional[str] = typer.Option(
        None, "--curvature", help="second-order with cg/lissa: ggn (default, PSD) or hessian (indefinite on LMs)."),
    newton_steps: Optional[int] = typer.Option(
        None, "--newton-steps", help="second-order: re-linearised Newton steps at most (default 3)."),
    train_tokens: Optional[int] = typer.Option(
        None, "--train-tokens", help="second-order, certified-head: training-set tokens the curvature is scaled to (default: the retain sample's)."),
    l2: Optional[float] = typer.Option(
        None, "--l2", help="certified-head: L2 strength mu of the strongly convex head objective (default 1e-3 x top curvature)."),
    params: Optional[str] = typer.Option(None, "--params", help="Parameters to update: all, auto (the tensors the secrets sit on, measured), mlp, attn, lm_head, embeddings, lora, -2:, -2:/mlp, globs, re:..."),
    localize_mass: Optional[float] = typer.Option(None, "--localize-mass", help="--params auto: share of the localisation score the chosen tensors cover (default 0.8)."),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Put the update in a new LoRA adapter."),
    merge_lora: Optional[bool] = typer.Option(None, "--merge-lora/--no-merge-lora", help="Save the LoRA update merged into full weights."),
    substitute: Optional[str] = typer.Option(None, "--substitute", help="random (default), model, placeholder."),
    target_exposure: Optional[float] = TargetOpt,
    retain_weight: Optional[float] = typer.Option(None, "--retain-weight", help="Weight of the retain loss in iterative steps (default 100)."),
    drop_leaking_tokens: Optional[bool] = typer.Option(None, "--drop-leaking-tokens/--keep-tokens", help="Opt-in: remove secret pieces the tokenizer scan flags from the saved tokenizer (ids kept)."),
    tokenizer_scan: Optional[bool] = typer.Option(None, "--tokenizer-scan/--no-tokenizer-scan", help="Scan the vocabulary for secret pieces (default on)."),
    report: Optional[Path] = ReportOpt,
    format: Optional[list[str]] = FormatOpt,
    reveal: Optional[bool] = RevealOpt,
    fail_above: Optional[float] = FailOpt,
    exposure_method: Optional[str] = ExpMethodOpt,
    n_references: Optional[int] = NRefOpt,
    seed: Optional[int] = SeedOpt,
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="Replace a non-empty --out."),
    allow_partial: Optional[bool] = AllowPartialOpt,
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Step budget of iterative updates (default 60)."),
    max_retain_increase: Optional[float] = typer.Option(
        None, "--max-retain-increase", help="Utility bound: largest relative rise of held-out loss (default 0.02 = +2%)."),
    loss_span: Optional[str] = typer.Option(None, "--loss-span", help="secret (default) or sequence: where the edit loss is taken."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="Rank of a new --lora adapter (default 8)."),
    gradient_checkpointing: Optional[bool] = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Less memory for updates, more time."),
    allow_pickle: Optional[bool] = PickleOpt,
    trust_remote_code: Optional[bool] = RemoteOpt,
    device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DTypeOpt,
    device_map: Optional[str] = DeviceMapOpt,
    threads: Optional[int] = ThreadsOpt,
    fail_on_tokenizer: Optional[bool] = FailTokOpt,
    robustness: Optional[bool] = RobustOpt,
    relearn_steps: Optional[int] = RelearnStepsOpt,
    relearn_lr: Optional[float] = RelearnLrOpt,
    reference_model: Optional[Path] = ReferenceOpt,
    fail_on_relearn: Optional[float] = FailRelearnOpt,
    exposure_seconds: Optional[float] = ExpSecondsOpt,
    adaptive_references: Optional[bool] = AdaptiveOpt,
    ripple_canaries: Optional[Path] = typer.Option(
        None, "--ripple-canaries", help="Other known canaries (not scrubbed): measured before and after, rises reported."),
    ripple_discovery: Optional[bool] = RippleDiscoveryOpt,
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Scrub the canaries from a model, save it to --out, and report before and after.

    Ends with a verdict: exit 0 only when every canary is at or below --target-exposure, none is extracted and the utility bound held; 1 otherwise (model still written), unless --allow-partial; 2 bad input.
    """

    def go() -> int:
        from scrubber import pipeline
        from scrubber.config import ScrubConfig, load_config

        cfg = load_config(ScrubConfig, config, _overrides(
            canaries=canaries, out=out, eval_data=eval_data, retain_data=retain_data, method=method,
            tau=tau, step_size=step_size, damping=damping, solver=solver, curvature=curvature,
            newton_steps=newton_steps, train_tokens=train_tokens, l2=l2, params=params, localize_mass=localize_mass, lora=lora, merge_lora=merge_lora,
            substitute=substitute, target_exposure=target_exposure, retain_weight=retain_weight,
            drop_leaking_tokens=drop_leaking_tokens, tokenizer_scan=tokenizer_scan, report=report, formats=format,
            reveal=reveal, fail_above=fail_above, exposure_method=exposure_method,
            n_references=n_references, seed=seed, force=force, allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code, device=device, dtype=dtype, device_map=device_map,
            threads=threads, fail_on_tokenizer=fail_on_tokenizer, allow_partial=allow_partial, max_steps=max_steps,
            max_retain_increase=max_retain_increase, loss_span=loss_span, lora_rank=lora_rank,
            gradient_checkpointing=gradient_checkpointing, robustness=robustness, relearn_steps=relearn_steps, relearn_lr=relearn_lr,
            reference_model=reference_model, fail_on_relearn=fail_on_relearn, ripple_canaries=ripple_canaries,
            ripple_discovery=ripple_discovery,
            exposure_seconds=exposure_seconds, adaptive_references=adaptive_references,
        ))
        _check_report(cfg)
        if cfg.canaries is None:
            raise ScrubberError("scrub needs --canaries FILE")
        if cfg.out is None:
            raise ScrubberError("scrub needs --out DIR")
        outcome = pipeline.scrub(model_dir, cfg, _progress(quiet))
        return _finish(outcome.report, cfg, None, quiet)

    _run(go)


@app.command("check-scrub")
def check_scrub(
    original: Path = typer.Argument(..., help="The checkpoint before the scrub."),
    scrubbed: Path = typer.Argument(..., help="The scrubbed checkpoint."),
    canaries: Optional[Path] = CanariesOpt,
    eval_data: Optional[Path] = EvalOpt,
    retain_data: Optional[Path] = typer.Option(None, "--retain-data", help="Clean text for the probe (90%) and the tune part."),
    reference_model: Optional[Path] = ReferenceOpt,
    relearn_steps: Optional[int] = RelearnStepsOpt,
    relearn_lr: Optional[float] = RelearnLrOpt,
    fail_on_relearn: Optional[float] = FailRelearnOpt,
    ripple_discovery: Optional[bool] = RippleDiscoveryOpt,
    target_exposure: Optional[float] = TargetOpt,
    allow_partial: Optional[bool] = AllowPartialOpt,
    report: Optional[Path] = ReportOpt,
    format: Optional[list[str]] = FormatOpt,
    reveal: Optional[bool] = RevealOpt,
    n_references: Optional[int] = NRefOpt,
    seed: Optional[int] = SeedOpt,
    allow_pickle: Optional[bool] = PickleOpt,
    trust_remote_code: Optional[bool] = RemoteOpt,
    device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DTypeOpt,
    threads: Optional[int] = ThreadsOpt,
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Judge a scrub after the fact: original vs scrubbed exposure, non-member test, relearning probe.

    Exit 0 when every canary is at or below --target-exposure in the scrubbed model, none is extracted, the utility bound held and (with --fail-on-relearn) the probe brought none back; 1 otherwise; 2 bad input.
    """

    def go() -> int:
        from scrubber import pipeline
        from scrubber.config import ScrubConfig, load_config

        cfg = load_config(ScrubConfig, config, _overrides(
            canaries=canaries, eval_data=eval_data, retain_data=retain_data, reference_model=reference_model,
            relearn_steps=relearn_steps, relearn_lr=relearn_lr, fail_on_relearn=fail_on_relearn,
            ripple_discovery=ripple_discovery,
            target_exposure=target_exposure, allow_partial=allow_partial, report=report, formats=format,
            reveal=reveal, n_references=n_references, seed=seed, allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code, device=device, dtype=dtype, threads=threads,
        ))
        _check_report(cfg)
        if cfg.canaries is None:
            raise ScrubberError("check-scrub needs --canaries FILE")
        rep = pipeline.check_scrub(original, scrubbed, cfg, _progress(quiet))
        return _finish(rep, cfg, None, quiet)

    _run(go)


@app.command()
def demo(
    out: Path = typer.Option(Path("scrubber-demo"), "--out", help="Where to leave the demo's models, canaries and reports."),
    method: Optional[str] = typer.Option(None, "--method", help="Scrub method (default iterative)."),
    rebuild: Optional[bool] = typer.Option(None, "--rebuild/--no-rebuild", help="Retrain the demo model even if cached."),
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="Replace --out even if it is not a demo directory."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Demo model cache (default ~/.cache/scrubber)."),
    quick: Optional[bool] = typer.Option(
        None, "--quick/--full", help="A reduced demo (2-layer model, 100 documents, 6 canaries): every stage in about a minute."),
    format: Optional[list[str]] = FormatOpt,
    reveal: Optional[bool] = RevealOpt,
    seed: Optional[int] = SeedOpt,
    allow_partial: Optional[bool] = AllowPartialOpt,
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train (or load) the built-in demo model, scan, scrub, rescan, and report."""

    def go() -> int:
        from scrubber.config import DemoConfig, load_config
        from scrubber.demo.run import run_demo

        cfg = load_config(DemoConfig, config, _overrides(
            out=out, method=method, rebuild=rebuild, force=force, cache_dir=cache_dir, quick=quick, formats=format,
            reveal=reveal, seed=seed, allow_partial=allow_partial,
        ))
        if "formats" not in cfg.model_fields_set:  # the demo's default adds the page with plots
            cfg.formats = ["json", "md", "html"]
        rep = run_demo(cfg, _progress(quiet))
        return _finish(rep, cfg, None, quiet)

    _run(go)


@app.command()
def train(
    model: Optional[Path] = typer.Argument(
        None, help="Checkpoint to fine-tune (or a dir with config.json + tokenizer and no weights: "
                   "train from scratch); a .yaml file here is read as --config."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training data: saved datasets dir, .jsonl (text field) or .txt."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir: model/, manifest.json, report.*, canaries.jsonl."),
    canaries_out: Optional[Path] = typer.Option(
        None, "--canaries-out", help="Canary file to write (default OUT/canaries.jsonl; raw secrets, mode 0600)."),
    canaries: Optional[Path] = typer.Option(None, "--canaries", help="Inject these canaries instead of making new ones."),
    canary_formats: Optional[list[str]] = typer.Option(
        None, "--canary-formats", help="Secret formats of new canaries (comma-separated or repeated)."),
    repetitions: Optional[str] = typer.Option(None, "--repetitions", help="Repetition counts, e.g. 1,4,16,64."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="Text column of the dataset (default text)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    block_size: Optional[int] = typer.Option(None, "--block-size"),
    eval_data: Optional[Path] = EvalOpt,
    report: Optional[Path] = ReportOpt,
    format: Optional[list[str]] = FormatOpt,
    reveal: Optional[bool] = RevealOpt,
    fail_above: Optional[float] = FailOpt,
    exposure_method: Optional[str] = ExpMethodOpt,
    n_references: Optional[int] = NRefOpt,
    seed: Optional[int] = SeedOpt,
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="Replace a non-empty --out."),
    allow_pickle: Optional[bool] = PickleOpt,
    trust_remote_code: Optional[bool] = RemoteOpt,
    device: Optional[str] = DeviceOpt,
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Secret Sharer audit: inject canaries into your data, fine-tune, report exposure.

    Writes OUT/model, OUT/manifest.json and the canary file (both hold the canaries raw, mode 0600) and OUT/report.*; --fail-above gates as in scan.
    """

    def go() -> int:
        from scrubber.audit import TrainAuditConfig, run_train
        from scrubber.config import load_config

        cfg_path, model_dir = config, model
        if model is not None and model.suffix in (".yaml", ".yml") and model.is_file():
            if config is not None:
                raise ScrubberError("give the YAML config either as MODEL or with --config, not both")
            cfg_path, model_dir = model, None
        cfg = load_config(TrainAuditConfig, cfg_path, _overrides(
            model=model_dir, data=data, out=out, canaries_out=canaries_out, canaries=canaries,
            canary_formats=canary_formats, repetitions=repetitions, text_field=text_field,
            epochs=epochs, lr=lr, batch_size=batch_size, block_size=block_size, eval_data=eval_data,
            report=report, formats=format, reveal=reveal, fail_above=fail_above,
            exposure_method=exposure_method, n_references=n_references, seed=seed, force=force,
            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device,
        ))
        _check_report(cfg)
        rep = run_train(cfg, _progress(quiet))
        return _finish(rep, cfg, Path(cfg.out) / "report", quiet)

    _run(go)


canaries_app = typer.Typer(no_args_is_help=True, help="Make and inject canaries.")
app.add_typer(canaries_app, name="canaries")


@canaries_app.command("inject")
def canaries_inject(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset: saved datasets dir, .jsonl (text field) or .txt."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir: data (same form as input), manifest.json, canaries.jsonl."),
    formats: Optional[list[str]] = typer.Option(
        None, "--formats", help="Secret formats (comma-separated or repeated): credit_card, password, digits8, '[A-Z]{3}-[0-9]{6}', ..."),
    repetitions: Optional[str] = typer.Option(None, "--repetitions", help="Repetition counts, e.g. 1,4,16,64."),
    canaries: Optional[Path] = typer.Option(None, "--canaries", help="Inject these canaries instead of making new ones."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="Text column (default text)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="insert (own records, default) or append (to existing records)."),
    seed: Optional[int] = SeedOpt,
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="Replace a non-empty --out."),
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write DATA with canaries injected, the manifest, and the canary file (raw secrets, mode 0600)."""

    def go() -> int:
        from scrubber.audit import InjectConfig, run_inject
        from scrubber.config import load_config

        cfg = load_config(InjectConfig, config, _overrides(
            data=data, out=out, canary_formats=formats, repetitions=repetitions, canaries=canaries,
            text_field=text_field, mode=mode, seed=seed, force=force,
        ))
        paths = run_inject(cfg)
        if not quiet:
            for p in paths.values():
                typer.echo(f"wrote {p}", err=True)
        return 0

    _run(go)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings that reach the user (e.g. negative curvature met by CG) as one line, like errors:
    Python's default prints the file, the line number and the source line under it."""
    text = str(message).strip().splitlines()
    (file or sys.stderr).write(f"warning: {text[0] if text else category.__name__}\n")


def install_warning_format() -> None:
    """Library chatter off (it would bury our one-line errors and the summary); the rest one line each."""
    import warnings

    from scrubber.io.checkpoint import _quiet_transformers

    _quiet_transformers()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = _one_line_warning


def main() -> None:
    install_warning_format()
    app()


if __name__ == "__main__":
    main()
