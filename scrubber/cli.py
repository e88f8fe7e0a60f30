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
ReportOpt = typer.Option(None, "--report", help="Report base path: writes BASE.json, BASE.md, ...")
FormatOpt = typer.Option(None, "--format", help="Report format(s): json, md, html, sarif (repeatable).")
RevealOpt = typer.Option(None, "--reveal/--no-reveal", help="Show secrets unmasked in reports.")
FailOpt = typer.Option(None, "--fail-above", help="CI gate: exit 1 if any exposure exceeds BITS.")
ExpMethodOpt = typer.Option(None, "--exposure-method", help="auto, exact, search, extrapolated or interpolated.")
NRefOpt = typer.Option(None, "--n-references", help="Format-random references per canary (default 1000).")
SeedOpt = typer.Option(None, "--seed", help="Seed for references and substitutes.")
PickleOpt = typer.Option(None, "--allow-pickle/--no-allow-pickle", help="Allow pickle weights (can run code).")
RemoteOpt = typer.Option(None, "--trust-remote-code/--no-trust-remote-code", help="Allow custom model code.")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1, ...")


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
    from scrubber.progress import RichProgress, Silent

    return Silent() if quiet or not sys.stderr.isatty() and os.environ.get("CI") else RichProgress()


def _finish(report, cfg, default_base: Path | None, quiet: bool) -> int:
    from scrubber.report import write_reports
    from scrubber.summary import print_summary

    base = cfg.report or default_base
    if base is not None:
        try:
            paths = write_reports(report, Path(base), list(cfg.formats))
        except ValueError as err:
            raise ScrubberError(str(err)) from None
        if not quiet:
            for p in paths.values():
                typer.echo(f"wrote {p}", err=True)
    if not quiet:
        print_summary(report)
    if report.gate is not None and report.gate.failed:
        typer.echo(
            f"gate: {len(report.gate.offenders)} item(s) above {report.gate.fail_above} bits", err=True
        )
        return 1
    return 0


def _overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
def scan(
    model_dir: Path = typer.Argument(..., help="Local checkpoint directory (save_pretrained)."),
    canaries: Optional[Path] = CanariesOpt,
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
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Exposure report for known canaries (--canaries)."""

    def go() -> int:
        from scrubber import pipeline
        from scrubber.config import ScanConfig, load_config

        cfg = load_config(ScanConfig, config, _overrides(
            canaries=canaries, eval_data=eval_data, report=report, formats=format, reveal=reveal,
            fail_above=fail_above, exposure_method=exposure_method, n_references=n_references,
            seed=seed, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device,
        ))
        if cfg.canaries is None:
            raise ScrubberError("scan needs --canaries FILE")
        rep = pipeline.scan(model_dir, cfg, _progress(quiet))
        return _finish(rep, cfg, None, quiet)

    _run(go)


@app.command()
def scrub(
    model_dir: Path = typer.Argument(..., help="Local checkpoint directory (never modified)."),
    canaries: Optional[Path] = CanariesOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the scrubbed model (created)."),
    eval_data: Optional[Path] = EvalOpt,
    retain_data: Optional[Path] = typer.Option(None, "--retain-data", help="Training-like text for the retain term (default: eval data)."),
    method: Optional[str] = typer.Option(None, "--method", help="iterative (default), first-order, second-order, iau."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Unlearning rate; default: chosen automatically."),
    damping: Optional[float] = typer.Option(None, "--damping", help="Second-order damping lambda."),
    params: Optional[str] = typer.Option(None, "--params", help="Parameters to update: all, mlp, attn, lm_head, embeddings, lora, -2:, -2:/mlp, globs, re:..."),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Put the update in a new LoRA adapter."),
    merge_lora: Optional[bool] = typer.Option(None, "--merge-lora/--no-merge-lora", help="Save the LoRA update merged into full weights."),
    substitute: Optional[str] = typer.Option(None, "--substitute", help="random (default), model, placeholder."),
    target_exposure: Optional[float] = typer.Option(None, "--target-exposure", help="Bits every canary should end at or below."),
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
    """Scrub the canaries from a model, save it to --out, and report before and after."""

    def go() -> int:
        from scrubber import pipeline
        from scrubber.config import ScrubConfig, load_config

        cfg = load_config(ScrubConfig, config, _overrides(
            canaries=canaries, out=out, eval_data=eval_data, retain_data=retain_data, method=method,
            tau=tau, damping=damping, params=params, lora=lora, merge_lora=merge_lora,
            substitute=substitute, target_exposure=target_exposure, report=report, formats=format,
            reveal=reveal, fail_above=fail_above, exposure_method=exposure_method,
            n_references=n_references, seed=seed, force=force, allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code, device=device,
        ))
        if cfg.canaries is None:
            raise ScrubberError("scrub needs --canaries FILE")
        if cfg.out is None:
            raise ScrubberError("scrub needs --out DIR")
        outcome = pipeline.scrub(model_dir, cfg, _progress(quiet))
        return _finish(outcome.report, cfg, None, quiet)

    _run(go)


@app.command()
def demo(
    out: Path = typer.Option(Path("scrubber-demo"), "--out", help="Where to leave the demo's models, canaries and reports."),
    method: Optional[str] = typer.Option(None, "--method", help="Scrub method (default iterative)."),
    rebuild: Optional[bool] = typer.Option(None, "--rebuild/--no-rebuild", help="Retrain the demo model even if cached."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Demo model cache (default ~/.cache/scrubber)."),
    format: Optional[list[str]] = FormatOpt,
    reveal: Optional[bool] = RevealOpt,
    seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train (or load) the built-in demo model, scan, scrub, rescan, and report."""

    def go() -> int:
        from scrubber.config import DemoConfig, load_config
        from scrubber.demo_run import run_demo

        cfg = load_config(DemoConfig, config, _overrides(
            out=out, method=method, rebuild=rebuild, cache_dir=cache_dir, formats=format,
            reveal=reveal, seed=seed,
        ))
        if cfg.formats == ["json", "md"]:
            cfg.formats = ["json", "md", "html"]
        rep = run_demo(cfg, _progress(quiet))
        return _finish(rep, cfg, None, quiet)

    _run(go)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
