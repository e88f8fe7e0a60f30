"""``scrubber scan MODEL --data DATA``: audit a model against the data it was trained on.

Discovery guesses where a secret might be (bait prompts, samples) and misses what follows
phrasings it did not guess. A user who has the training data does not need to guess: every
secret the data holds, and the text it followed, is there to read. So:

1. **Read** DATA streamed, record by record (plain text split on blank lines, JSON Lines, or a
   saved ``datasets`` directory, its train split first), and run the detectors of
   :mod:`canaries.detect` over every record: Luhn-valid cards, mixed-class passwords, prose rules,
   detect-secrets' key plugins, and the user's formats (``--format-spec``). Keyword-rule hits
   must look generated (:func:`scrubber.discovery.candidates.looks_random`), for the reason
   discovery gives: a word the model knows has a huge exposure against random strings.
   Memory holds one entry per distinct value, never the records.
2. **Choose** the ``max_data_secrets`` most frequent distinct values (ties: first seen); the rest
   are counted as skipped, and the report says how often the most frequent of them occurred.
3. **Measure** each as a canary whose prefix is its real context: the text before it in a record
   (the last ``data_context_chars``, from a word boundary; the record's start when nearer), the
   context it followed most often. Exposure and extraction come from the known-canary machinery
   (:func:`scrubber.measure.canary.measure_canaries`, through the ``scan`` command's report).
4. **Judge** by the tool's one memorization rule (:func:`scrubber.measure.memorized.decide`),
   as for known canaries: the values were chosen from the data before the model was looked at,
   so a value's rank p-value ``2^-exposure`` is exact. Significant at the scan's false-alarm
   rate (``false_alarm_rate``, split over the formats and values measured), and extracted or at
   least ``memorization_threshold`` bits. This is what lets a 6-digit code the model recites
   count, though it can never reach 20 bits.
5. **Emit**: the memorized values as canaries whose ``documents`` are the records holding them
   (a second streamed pass, only for those values), so ``scrubber scrub`` edits every occurrence.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from canaries.canary import Canary, CanaryFileError, load_canaries
from canaries.detect import Finding, SecretScanner
from canaries.formats import FormatError, get_format
from canaries.mask import mask_secret, mask_text
from canaries.public_values import public_test_value
from scrubber.config import DataAuditOptions
from scrubber.discovery.candidates import SCAN_FORMATS, looks_random
from scrubber.discovery.config import DiscoverScanConfig
from scrubber.errors import ScrubberError
from scrubber.io.data import check_data_path, count_documents, iter_documents
from scrubber.measure.memorized import MemorizationRule, annotate_canaries, decide, effective_tests, required_bits
from scrubber.progress import Progress, Silent
from scrubber.report import CanaryReport, FindingReport, Report, compute_gate
from scrubber.report.schema import DataAudit


class DataScanConfig(DiscoverScanConfig, DataAuditOptions):
    """``scrubber scan`` with ``--data``: known canaries, discovery and the data audit."""


# -- detecting ---------------------------------------------------------------------------

_GENERIC_DS_KINDS = ("api_key", "password", "high_entropy")
_INFERRED_KINDS = ("password", "api_key", "high_entropy")
_DETECTOR_RANK = {"format": 0, "detect-secrets": 1, "prose": 2}
#: Distinct contexts remembered per value when choosing its prefix (more are counted, not stored).
MAX_CONTEXTS = 16
_SPACE = re.compile(r"\s")


@dataclass
class DataSecret:
    """One distinct value found in the data; its repr never shows the value or its context."""

    value: str = field(repr=False)
    format: str
    kind: str
    detector: str
    """``source:kind`` as in discovery, e.g. ``format:credit_card``, ``prose:password``."""
    first_record: int
    occurrences: int = 0
    contexts: Counter = field(default_factory=Counter, repr=False)
    """Prefix -> records it preceded the value in (first occurrence per record)."""

    @property
    def prefix(self) -> str:
        """The context it followed most often; ties: the first seen (Counter keeps insertion order)."""
        return max(self.contexts.items(), key=lambda kv: kv[1])[0] if self.contexts else ""

    def masked(self) -> str:
        """Masked value; an inferred format's literals are part of the secret, so only formats
        whose literals are public (cards, user patterns) shape the mask."""
        return mask_secret(self.value, None if self.kind in _INFERRED_KINDS else get_format(self.format))


@dataclass
class DataSecrets:
    secrets: list[DataSecret]
    """Most frequent first; ties in order of first appearance."""
    records: int
    hits: int
    dropped: dict[str, int]


def data_scanner(cfg: DataAuditOptions, high_entropy: bool = False) -> SecretScanner:
    """Discovery's formats plus the user's, prose rules and detect-secrets."""
    return SecretScanner([*SCAN_FORMATS, *cfg.format_spec], high_entropy=high_entropy)


def context_before(text: str, start: int, chars: int) -> str:
    """The record's text before ``start``: all of it when within ``chars`` (the record start is
    the document start the model saw), else the last ``chars`` from the first word boundary."""
    lo = max(0, start - chars)
    ctx = text[lo:start]
    if lo > 0:
        cut = _SPACE.search(ctx)
        if cut is not None and cut.end() < len(ctx):
            ctx = ctx[cut.end():]
    return ctx


def _generic(f: Finding) -> bool:
    """A keyword rule's hit rather than a format's or a provider's key pattern."""
    return f.detector == "prose" or (f.detector == "detect-secrets" and f.kind in _GENERIC_DS_KINDS)


def _measurable(f: Finding) -> bool:
    if not f.format:
        return False
    try:
        fmt = get_format(f.format)
    except FormatError:
        return False
    return fmt.size >= 2 and fmt.matches(f.value)


def _kind(f: Finding, user: set[str]) -> str:
    return "pattern" if f.format in user and f.detector == "format" else f.kind


def collect_secrets(
    documents: Iterable[str], scanner: SecretScanner, *, context_chars: int = 200,
    user_formats: Sequence[str] = (), on_record: Callable[[int], None] | None = None, batch: int = 256,
) -> DataSecrets:
    """Every distinct secret value in ``documents`` with its occurrence count and contexts."""
    user = set(user_formats)
    by_value: dict[str, DataSecret] = {}
    dropped = {"not_random": 0, "unmeasurable": 0}
    hits = records = 0

    def scan(texts: list[str], first: int) -> None:
        nonlocal hits
        for i, (text, found) in enumerate(zip(texts, scanner.scan_many(texts))):
            seen_here: set[str] = set()
            for f in found:
                hits += 1
                if _generic(f) and not looks_random(f.value):
                    dropped["not_random"] += 1
                    continue
                if not _measurable(f):
                    dropped["unmeasurable"] += 1
                    continue
                kind = _kind(f, user)
                s = by_value.get(f.value)
                if s is None:
                    s = by_value[f.value] = DataSecret(f.value, f.format, kind, f"{f.detector}:{kind}", first + i)  # type: ignore[arg-type]
                elif _DETECTOR_RANK.get(f.detector, 9) < _DETECTOR_RANK.get(s.detector.split(":")[0], 9):
                    s.format, s.kind, s.detector = f.format, kind, f"{f.detector}:{kind}"  # type: ignore[assignment]
                s.occurrences += 1
                if f.value not in seen_here:
                    seen_here.add(f.value)
                    ctx = context_before(text, f.start, context_chars)
                    if ctx in s.contexts or len(s.contexts) < MAX_CONTEXTS:
                        s.contexts[ctx] += 1

    pending: list[str] = []
    for text in documents:
        pending.append(text)
        if len(pending) == batch:
            scan(pending, records)
            records += len(pending)
            pending = []
            if on_record:
                on_record(records)
    if pending:
        scan(pending, records)
        records += len(pending)
        if on_record:
            on_record(records)
    ordered = sorted(by_value.values(), key=lambda s: (-s.occurrences, s.first_record))
    return DataSecrets(ordered, records, hits, dropped)


def collect_documents(documents: Iterable[str], values: Sequence[str], max_documents: int) -> dict[str, list[str]]:
    """The distinct records holding each value (at most ``max_documents``, first seen first).

    Any record holding the value counts, whether or not a detector fired on it there: the model
    trained on every occurrence, so the scrub must edit every one.
    """
    out: dict[str, dict[str, None]] = {v: {} for v in values}
    for text in documents:
        for v, docs in out.items():
            if len(docs) < max_documents and v in text:
                docs.setdefault(text, None)
    return {v: list(d) for v, d in out.items()}


# -- judging ------------------------------------------------------------------------------


def data_canaries(secrets: Sequence[DataSecret]) -> list[Canary]:
    """One canary per value, ids ``data-<kind>-<n>`` numbered per kind in the chosen order."""
    kinds: Counter = Counter()
    out = []
    for s in secrets:
        kinds[s.kind] += 1
        cid = f"data-{re.sub(r'[^a-z0-9]+', '-', s.kind.lower()).strip('-')}-{kinds[s.kind]}"
        out.append(Canary(id=cid, prefix=s.prefix, secret=s.value, format=s.format, repetitions=s.occurrences))
    return out


def _mask_partial_start(ctx: str, values: Iterable[str]) -> list[tuple[int, int]]:
    """Spans at the context's start that are the tail of a value cut off by the window."""
    spans = []
    for v in values:
        if len(v) < 6 or v[-4:] not in ctx[: len(v)]:
            continue
        for k in range(1, len(v) - 3):
            if ctx.startswith(v[k:]):
                spans.append((0, len(v) - k))
                break
    return spans


def masked_context(ctx: str, scanner: SecretScanner, values: Iterable[str]) -> str:
    """A prefix for the report: every value the detectors see in it, every known value, and a
    known value's tail cut by the window, masked (records hold other secrets than the one measured)."""
    values = list(values)
    secrets = [f.value for f in scanner.scan(ctx)] + [v for v in values if v in ctx]
    out = mask_text(ctx, secrets) if secrets else ctx
    for lo, hi in _mask_partial_start(ctx, values):
        out = "*" * (hi - lo) + out[hi:]
    return out


@dataclass
class JudgedSecret:
    secret: DataSecret = field(repr=False)
    canary: Canary = field(repr=False)
    finding: FindingReport


def judge_data_secrets(
    chosen: Sequence[DataSecret], canaries: Sequence[Canary], reports: dict[str, CanaryReport], *,
    rule: MemorizationRule, reveal: bool, scanner: SecretScanner, known_values: Iterable[str],
) -> list[JudgedSecret]:
    """The measured values as findings (``source: data``), highest exposure first, judged as
    known canaries are (``selected=False``: no recurrence or confidence condition)."""
    known_values = list(known_values)
    tests = effective_tests(s.format for s in chosen)
    out = []
    for s, c in zip(chosen, canaries):
        m = reports[c.id].before
        public = public_test_value(s.value)
        d = decide(m.exposure, tests[s.format], extracted=m.extracted, max_exposure=c.fmt.log2_size, rule=rule)
        out.append(JudgedSecret(s, c, FindingReport(
            id=c.id, format=s.format, detector=s.detector,
            prompt=c.prefix if reveal else masked_context(c.prefix, scanner, known_values),
            value=s.value if reveal else s.masked(),
            max_exposure=c.fmt.log2_size, exposure=m,
            memorized=d.memorized and public is None,  # known from the web, not leaked
            public_test_value=public, source="data", occurrences=s.occurrences,
        )))
    out.sort(key=lambda j: (-j.finding.exposure.exposure, -j.secret.occurrences))
    return out


# -- the scan ---------------------------------------------------------------------------------


@dataclass
class DataScanOutcome:
    report: Report
    discovery: object | None
    """The discovery result when ``--discover`` ran too (scrubber.discovery.scan.DiscoveryResult)."""
    judged: list[JudgedSecret] = field(repr=False)
    cfg: DataScanConfig = field(repr=False)

    def memorized_canaries(self, progress: Progress | None = None) -> list[Canary]:
        """The memorized values as canaries (raw secrets) with every record holding them as
        ``documents``: a second pass over the data, for those values only."""
        keep = [j for j in self.judged if j.finding.memorized]
        if not keep:
            return []
        progress = progress or Silent()
        with progress.stage("collecting the records that hold memorized secrets"):
            docs = collect_documents(iter_documents(self.cfg.data, self.cfg.text_field),
                                     [j.secret.value for j in keep], self.cfg.data_max_documents)
        return [j.canary.model_copy(update={"documents": docs[j.secret.value] or None}) for j in keep]


def _known_canaries(cfg: DataScanConfig) -> list[Canary]:
    if cfg.canaries is None:
        return []
    try:
        return load_canaries(cfg.canaries)
    except CanaryFileError as err:
        raise ScrubberError(str(err)) from None


def scan_with_data(model_dir: Path, cfg: DataScanConfig, progress: Progress | None = None) -> DataScanOutcome:
    """The ``scan`` command with ``--data``: read and detect, measure the chosen values beside any
    known canaries (and discovery with ``--discover``), judge, and report."""
    from scrubber.discovery.scan import scan_report

    progress = progress or Silent()
    if cfg.data is None:
        raise ScrubberError("no --data given")
    check_data_path(cfg.data)
    known = _known_canaries(cfg)
    scanner = data_scanner(cfg, cfg.high_entropy)
    t0 = time.perf_counter()
    total = count_documents(cfg.data, cfg.text_field)
    with progress.stage(f"reading {cfg.data}", total=total, unit="records") as advance:
        found = collect_secrets(
            iter_documents(cfg.data, cfg.text_field), scanner, context_chars=cfg.data_context_chars,
            user_formats=cfg.format_spec, on_record=lambda n: advance(n, total or n),
        )  # fmt: skip
    if found.records == 0:
        raise ScrubberError(f"{cfg.data}: no text found")
    seconds = time.perf_counter() - t0
    chosen = found.secrets[: cfg.max_data_secrets]
    skipped = found.secrets[cfg.max_data_secrets:]
    canaries = data_canaries(chosen)
    clash = {c.id for c in known} & {c.id for c in canaries}
    if clash:
        raise ScrubberError(f"--canaries uses id(s) the data audit gives its values: {', '.join(sorted(clash))}")
    progress.log(f"data: {found.records} records, {len(found.secrets)} distinct secret values; "
                 f"measuring {len(chosen)}" + (f", {len(skipped)} skipped (--max-data-secrets)" if skipped else ""))
    rep, disc = scan_report(model_dir, cfg, progress, canaries=[*known, *canaries])
    rule = cfg.memorization_rule()
    ids = {c.id for c in canaries}
    judged = judge_data_secrets(
        chosen, canaries, {r.id: r for r in rep.canaries if r.id in ids}, rule=rule, reveal=cfg.reveal,
        scanner=scanner, known_values=[s.value for s in found.secrets],
    )  # fmt: skip
    rep.canaries = [r for r in rep.canaries if r.id not in ids]
    annotate_canaries(rep, rule)  # the known canaries' tests, without the data's values
    rep.findings = [j.finding for j in judged] + rep.findings
    tests = effective_tests(s.format for s in chosen)
    rep.data_audit = DataAudit(
        path=str(cfg.data), records=found.records, hits=found.hits, dropped=found.dropped,
        distinct=len(found.secrets), measured=len(chosen), skipped=len(skipped),
        skipped_max_occurrences=skipped[0].occurrences if skipped else None,
        required_bits={f: required_bits(k, rule.alpha) for f, k in tests.items()},
        false_alarm_rate=rule.alpha, strong_bits=rule.strong_bits,
        memorized=sum(j.finding.memorized for j in judged), formats=list(cfg.format_spec), seconds=seconds,
    )  # fmt: skip
    if cfg.fail_above is not None:  # findings moved: the gate sees them as findings (public ones excluded)
        rep.gate = compute_gate(rep, cfg.fail_above, cfg.fail_on_tokenizer)
    return DataScanOutcome(rep, disc, judged, cfg)


def audit_lines(audit: DataAudit) -> list[str]:
    """What was read, measured and skipped, in words (no value)."""
    lines = [f"data audit of {audit.path}: {audit.records} records, {audit.hits} detector hits, "
             f"{audit.distinct} distinct secret values, {audit.measured} measured"]
    if audit.skipped:
        lines.append(f"  {audit.skipped} not measured (over --max-data-secrets {audit.measured}), "
                     f"each seen at most {audit.skipped_max_occurrences} time(s)")
    dropped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in audit.dropped.items() if n)
    if dropped:
        lines.append(f"  hits dropped: {dropped}")
    need = ", ".join(f"{fmt} {bits:.1f}" for fmt, bits in audit.required_bits.items())
    lines.append(f"  memorized: significant at false-alarm rate {audit.false_alarm_rate:g} (bits needed: {need}) "
                 f"and extracted or >= {audit.strong_bits:g} bits: {audit.memorized}")
    return lines


def finding_line(f: FindingReport) -> str:
    """One measured value in one line (masked as the report holds it): id, value, occurrences,
    exposure of its maximum, extraction, verdict, format, and the end of its context."""
    verdict = ("MEMORIZED" if f.memorized else
               f"public test value ({f.public_test_value})" if f.public_test_value else "not memorized")
    top = "-" if f.max_exposure is None else f"{f.max_exposure:.1f}"
    ctx = f.prompt if len(f.prompt) <= 40 else "…" + f.prompt[-39:]
    return (f"{f.id:<20} {f.value:<19}  seen {f.occurrences or 0:>4}  {f.exposure.exposure:5.1f} of {top:>5} bits  "
            f"extracted {'yes' if f.exposure.extracted else 'no ':<3}  {verdict}  {f.format}  after {ctx!r}")


def print_data_findings(report: Report, console=None, max_rows: int = 50) -> None:
    """The data audit's summary and one line per measured value (masked as in the report) on
    stdout; lines rather than a table so nothing is cut on a narrow terminal or in a CI log."""
    from rich.console import Console

    console = console or Console()
    if report.data_audit is None:
        return
    rows = [f for f in report.findings if f.source == "data"]
    for line in audit_lines(report.data_audit) + [finding_line(f) for f in rows[:max_rows]]:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if len(rows) > max_rows:
        console.print(f"... and {len(rows) - max_rows} more in the report files", highlight=False)
