"""``scrubber scan`` without a canary file: sample, detect, judge, rank, report.

:func:`discover` turns a loaded model into ranked :class:`FindingReport` s;
:func:`scan_report` is the whole ``scan`` command (known canaries from a canary
file and/or discovery) as one :class:`Report`; :func:`write_canary_file`
writes the memorized findings in the canary-file format ``scrubber scrub``
reads, so the two commands chain.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from canaries.canary import Canary
from canaries.detect import SecretScanner
from canaries.public_values import public_test_value
from canaries.substitutes import Allowlist, AllowlistError
from scrubber.discovery.anchors import AnchorSettings, anchor_search
from scrubber.discovery.baits import resolve_baits
from scrubber.discovery.candidates import SCAN_FORMATS, extract_candidates
from scrubber.discovery.config import DiscoverScanConfig, DiscoveryOptions
from scrubber.discovery.judge import Judgement, judge_candidates
from scrubber.discovery.sampling import SamplingSettings, sample_generations
from scrubber.errors import ScrubberError
from scrubber.measure.canary import to_measurement
from scrubber.measure.memorized import annotate_canaries
from scrubber.io.checkpoint import LoadedModel
from scrubber.progress import Progress, Silent
from scrubber.report import FindingReport, Report


@dataclass
class DiscoveryResult:
    findings: list[FindingReport]
    """Ranked by exposure, highest first; values masked unless ``reveal``."""
    judgements: list[Judgement] = field(repr=False)
    """Same order as ``findings``; hold the raw values (never print them)."""
    n_samples: int = 0
    stats: dict = field(default_factory=dict)

    def memorized_canaries(self) -> list[Canary]:
        """The memorized findings as canaries (raw secrets): input for ``scrubber scrub``."""
        out = []
        for f, j in zip(self.findings, self.judgements):
            if f.memorized:  # public test values are never memorized findings
                out.append(Canary(id=f.id, prefix=j.occurrence.prefix, secret=j.candidate.value,
                                  format=j.candidate.format))
        return out


def _settings(cfg: DiscoveryOptions, seed: int) -> SamplingSettings:
    return SamplingSettings(
        samples_per_bait=cfg.samples_per_bait, unconditional_samples=cfg.unconditional_samples,
        max_new_tokens=cfg.max_new_tokens, unconditional_tokens=cfg.unconditional_tokens,
        top_k=cfg.top_k, temperature=cfg.temperature, greedy=cfg.greedy, branch_top=cfg.branch_top,
        batch_size=cfg.sample_batch_size, seed=seed,
    )  # fmt: skip


def load_allowlist(model_dir: Path) -> Allowlist:
    try:
        return Allowlist.load(model_dir)
    except AllowlistError as err:
        raise ScrubberError(str(err)) from None


def run_discovery(
    loaded: LoadedModel, cfg: DiscoverScanConfig, progress: Progress | None = None
) -> DiscoveryResult:
    progress = progress or Silent()
    baits = resolve_baits(cfg.baits, cfg.default_baits)
    settings = _settings(cfg, cfg.seed)
    if not baits and not settings.unconditional_samples:
        raise ScrubberError("discovery has nothing to sample: no baits and unconditional_samples is 0")
    greedy_rows = (settings.branch_top if settings.branch_top > 1 else 1) if settings.greedy else 0
    total = (len(baits) * (settings.samples_per_bait + greedy_rows)
             + settings.unconditional_samples)
    with progress.stage("sampling", total=total) as advance:
        gens = sample_generations(loaded.model, loaded.tokenizer, baits, settings, advance)
    stats: dict = {}
    n_sampled = len(gens)
    if cfg.anchor_search and cfg.anchor_top:
        anchored, counts = _anchored(loaded, cfg, gens, progress)
        stats.update(counts)
        gens = gens + anchored
    scanner = SecretScanner(SCAN_FORMATS, high_entropy=cfg.high_entropy)
    with progress.stage("detecting candidates"):
        cands = extract_candidates(
            gens, allowlist=load_allowlist(loaded.path), scanner=scanner,
            max_candidates=cfg.max_candidates, stats=stats,
        )  # fmt: skip
    with progress.stage("exposure of candidates", total=len(cands)) as advance:
        judged = judge_candidates(
            loaded.model, loaded.tokenizer, cands, cfg, threshold=cfg.memorization_threshold,
            contexts_per_value=cfg.contexts_per_value, screen_references=cfg.screen_references,
            min_repeats=cfg.min_repeats, rule=cfg.memorization_rule(),
            on_done=advance,
        )  # fmt: skip
    judged.sort(key=lambda j: (-j.exposure, -j.candidate.count))
    findings: list[FindingReport] = []
    kinds: dict[str, int] = {}
    for j in judged:
        c = j.candidate
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
        findings.append(FindingReport(
            id=f"{c.kind.replace('_', '-')}-{kinds[c.kind]}",
            format=c.format,
            detector=c.detector,
            prompt=j.occurrence.prompt,
            value=c.value if cfg.reveal else j.masked_value(),
            max_exposure=j.result.max_exposure,
            exposure=to_measurement(j.result, j.extracted),
            zlib_ratio=j.zlib_ratio,
            perplexity=j.perplexity,
            memorized=j.memorized and public_test_value(c.value) is None,  # known from the web, not leaked
            public_test_value=public_test_value(c.value),
        ))  # fmt: skip
    stats["samples"] = n_sampled
    stats["candidates"] = len(cands)
    return DiscoveryResult(findings, judged, n_sampled, stats)


def tokenizer_seeds(tokenizer) -> list[int]:
    """Token ids of the vocabulary entries the tokenizer scan's discovery reports (secret-shaped
    pieces such as a card's digit group); empty for tokenizers it cannot read."""
    from scrubber.tokenizer_scan.discover import discover as discover_vocab
    from scrubber.tokenizer_scan.scan import TokenizerScanConfig
    from scrubber.tokenizer_scan.vocab import TokenizerScanError, VocabView

    try:
        view = VocabView.from_tokenizer(tokenizer)
    except TokenizerScanError:
        return []
    return sorted({t for f in discover_vocab(view, TokenizerScanConfig()) for t in f.token_ids})


def _anchored(loaded: LoadedModel, cfg: DiscoveryOptions, gens, progress: Progress):
    """Anchored greedy branches from every sample's text (see scrubber.discovery.anchors)."""
    s = AnchorSettings(min_mass=cfg.anchor_min_mass, top_anchors=cfg.anchor_top, branch_top=cfg.anchor_branches,
                       batch_size=cfg.sample_batch_size)
    seeds = tokenizer_seeds(loaded.tokenizer) if cfg.anchor_seeds else []
    # unconditional samples first (no bait in them), then the rest, up to anchor_contexts texts
    texts = [g.text for g in sorted(gens, key=lambda g: g.bait is not None)][: cfg.anchor_contexts]
    with progress.stage("anchored search", total=cfg.anchor_top * cfg.anchor_branches) as advance:
        out, counts = anchor_search(loaded.model, loaded.tokenizer, texts, s, seeds, advance)
    counts["anchor_seed_tokens"] = len(seeds)
    return out, counts


def discover(loaded: LoadedModel, cfg: DiscoverScanConfig, progress: Progress | None = None) -> list[FindingReport]:
    """Ranked findings (highest exposure first) of a discovery scan of ``loaded``."""
    return run_discovery(loaded, cfg, progress).findings


def scan_report(
    model_dir: Path, cfg: DiscoverScanConfig, progress: Progress | None = None,
    canaries: list[Canary] | None = None,
) -> tuple[Report, DiscoveryResult | None]:
    """The ``scan`` command: known canaries (if a canary file is given), discovery
    (without one, or with ``discover``), utility, gate."""
    from scrubber import pipeline
    from scrubber.measure.canary import measure_canaries, reference_sets
    from scrubber.report import ModelInfo, Utility, compute_gate
    from scrubber.measure.utility import perplexity

    progress = progress or Silent()
    known = canaries is not None or cfg.canaries is not None
    run_disc = cfg.discover or not known
    inputs = pipeline.load_inputs(model_dir, cfg, canaries if known else [])
    loaded = inputs.loaded
    before = {}
    if inputs.canaries:
        with progress.stage("exposure of canaries", total=len(inputs.canaries)) as advance:
            done = [0]

            def tick(_c: Canary) -> None:
                done[0] += 1
                advance(done[0], len(inputs.canaries))

            before = measure_canaries(loaded, inputs.canaries, cfg, reference_sets(inputs.canaries, cfg), tick)
    result = run_discovery(loaded, cfg, progress) if run_disc else None
    ppl = n = None
    if inputs.eval_texts:
        with progress.stage("held-out perplexity"):
            ppl, n = perplexity(loaded.model, loaded.tokenizer, inputs.eval_texts, max_tokens=cfg.max_eval_tokens)
    report = Report(
        command="scan",
        model=ModelInfo(path=str(loaded.path), architecture=loaded.architecture,
                        n_parameters=loaded.n_parameters),
        revealed=cfg.reveal,
        canaries=pipeline.canary_reports(inputs.canaries, before, None, None, cfg.reveal),
        findings=result.findings if result else [],
        tokenizer=_tokenizer_section(pipeline, loaded, inputs.canaries, cfg, progress),
        utility=Utility(perplexity_before=ppl, eval_tokens=n),
    )
    annotate_canaries(report, cfg.memorization_rule())
    if cfg.fail_above is not None:
        report.gate = compute_gate(report, cfg.fail_above, cfg.fail_on_tokenizer)
    return report, result


def _tokenizer_section(pipeline, loaded, canaries, cfg, progress):
    """The vocabulary leak scan, as ``pipeline.scan`` does it (when that pipeline has one)."""
    section = getattr(pipeline, "tokenizer_section", None)
    return section(loaded, canaries, cfg, progress) if section is not None else None


def write_canary_file(canaries: Sequence[Canary], path: Path, full: bool = False) -> Path:
    """JSON Lines (id, prefix, secret, format; every field with ``full``), created with
    mode 0600, written atomically.

    The secrets are raw: the file exists to be fed to ``scrubber scrub``.
    """
    path = Path(path)
    if path.is_dir():
        raise ScrubberError(f"--emit-canaries {path}: is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for c in canaries:
                rec = (c.model_dump(exclude_none=True) if full else
                       {"id": c.id, "prefix": c.prefix, "secret": c.secret, "format": c.format})
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def print_findings(report: Report, threshold: float, console=None) -> None:
    """The findings table (values already masked in the report) on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not report.findings:
        console.print("discovery: no candidate secrets found")
        return
    table = Table(title=f"discovery: {sum(f.memorized for f in report.findings)} memorized "
                        f"of {len(report.findings)} candidates (false-alarm bound, extracted or "
                        f"≥ {threshold:g} bits: docs/scanning.md)")
    for col, just in (("finding", "left"), ("format", "left"), ("value", "left"), ("prompt", "left"),
                      ("exposure", "right"), ("max", "right"), ("zlib", "right"), ("ppl", "right"),
                      ("extracted", "left"), ("memorized", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for f in report.findings[:50]:
        m = f.exposure
        table.add_row(
            f.id, f.format, f.value, f.prompt, f"{m.exposure:.1f}",
            "-" if f.max_exposure is None else f"{f.max_exposure:.1f}",
            "-" if f.zlib_ratio is None else f"{f.zlib_ratio:.2f}",
            "-" if f.perplexity is None else f"{f.perplexity:.1f}",
            "yes" if m.extracted else "no",
            "YES" if f.memorized else ("public test value" if f.public_test_value else "no"),
        )
    console.print(table)
    if len(report.findings) > 50:
        console.print(f"... and {len(report.findings) - 50} more in the report files")
