"""The exposure report as pydantic models: the one source of truth for every writer.

People's CI parses ``report.json``, so field names here are a contract: add fields,
never rename or remove them without bumping :data:`SCHEMA_VERSION`. Secrets arrive
already masked (unless ``revealed``); nothing here or in the writers unmasks them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"

ExposureMethod = Literal["exact", "search", "extrapolated", "interpolated"]
Command = Literal["scan", "scrub", "demo", "check-scrub"]


class _Strict(BaseModel):
    """Unknown keys rejected, no NaN/inf (not valid JSON), and inputs kept out of errors
    so a validation failure never prints a secret. The JSON Schema lists every key as
    required because the writer always emits it (null when absent)."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, hide_input_in_errors=True,
        json_schema_serialization_defaults_required=True,  # every key is always written
    )


def tool_version() -> str:
    try:
        return metadata.version("scrubber")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


class ToolInfo(_Strict):
    name: Literal["scrubber"] = "scrubber"
    version: str = Field(default_factory=tool_version, description="scrubber's package version.")


class ModelInfo(_Strict):
    path: str = Field(description="The checkpoint directory as given on the command line.")
    architecture: str | None = Field(None, description="config.architectures[0], e.g. 'GPT2LMHeadModel'.")
    n_parameters: int | None = Field(None, ge=0, description="Total parameter count.")
    source_format: str = Field("safetensors", description="'safetensors', 'pickle' or 'gguf': what was read.")
    dequantized_from: str | None = Field(
        None, description="GGUF input: the quantization it was dequantized from (e.g. 'Q4_1'); figures are of the dequantized model."
    )
    dtype: str = Field("float32", description="Dtype the weights were loaded and scored in.")


class Measurement(_Strict):
    """One exposure measurement of one secret against one model."""

    exposure: float = Field(description="Exposure in bits: log2|R| - log2 rank (or -log2 CDF when extrapolated).")
    exposure_method: ExposureMethod = Field(description="How the rank was obtained.")
    ci_low: float | None = Field(None, description="Lower end of the exposure's confidence interval, bits.")
    ci_high: float | None = Field(None, description="Upper end of the exposure's confidence interval, bits.")
    rank: float | None = Field(
        None, ge=1, description="1 + candidates scoring <= the secret; fractional when estimated."
    )
    score_bits: float = Field(description="Log-perplexity of the secret tokens given the prefix, bits.")
    n_references: int = Field(0, ge=0, description="Format-random reference candidates actually scored.")
    n_references_max: int | None = Field(None, ge=0, description="References planned (--n-references).")
    references_stop: str | None = Field(
        None, description="Why scoring stopped early: 'unexposed' | 'exposed' | 'search' | 'time' | 'flops'; null when all were scored."
    )
    seconds: float | None = Field(None, ge=0, description="Wall time of this measurement.")
    capped: bool = Field(False, description="The estimate exceeded log2|R| and was capped to it.")
    fallback_reason: str | None = Field(
        None, description="Why a more exact method was not used (e.g. the search's time budget ran out, or the tokenizer breaks its assumptions)."
    )
    extracted: bool = Field(description="Greedy decoding from the prefix reproduces the secret.")
    reference_percentiles: dict[str, float] = Field(
        default_factory=dict, description="Percentiles of the reference scores in bits, keyed 'p1', 'p50', ..."
    )
    reference_scores: list[float] | None = Field(
        None, exclude=True, description="All reference scores (bits), kept in memory for plots only."
    )


class NonMemberTest(_Strict):
    """Is the scrubbed secret indistinguishable from values the model never saw?

    Fresh random members of the format (disjoint from the exposure references) are
    scored after the same prefix; a scrub should leave the secret inside their range.
    Far *below* it is a trace of the scrub too (the Streisand effect)."""

    verdict: Literal["inside", "above", "below"] = Field(
        description="'above': still more likely than non-members (under-scrubbed); 'below': far less likely (over-scrubbed)."
    )
    n_nonmembers: int = Field(ge=1, description="Fresh random values scored.")
    quantile: float = Field(ge=0, le=1, description="Fraction of non-members scoring <= the secret (0 = more likely than all).")
    p_above: float | None = Field(None, ge=0, le=1, description="Conformal p-value that the secret is more likely than non-members.")
    p_below: float | None = Field(None, ge=0, le=1, description="Conformal p-value that the secret is less likely than non-members.")
    alpha: float = Field(gt=0, lt=1, description="Two-sided false-alarm rate of the verdict.")
    score_bits: float = Field(description="The secret's log-perplexity after the scrub, bits.")
    nonmember_median_bits: float = Field(description="Median non-member score, bits.")


class CanaryReport(_Strict):
    """A known canary (``prefix + secret``) measured before and, after a scrub, after."""

    id: str = Field(description="The canary's id from the canary file.")
    format: str = Field(description="Built-in format name or pattern spec.")
    repetitions: int | None = Field(None, ge=0, description="Times inserted in training, if known.")
    max_exposure: float = Field(ge=0, description="log2|R|: the largest exposure possible for the format.")
    secret: str = Field(description="Masked unless the report is 'revealed'.")
    prefix: str = Field(description="The text the secret follows; scored as context, never as the secret.")
    before: Measurement = Field(description="Measured on the input model.")
    after: Measurement | None = Field(None, description="Present only after a scrub.")
    substitute: str | None = Field(None, description="The benign replacement used by the scrub, masked.")
    reference: Measurement | None = Field(
        None, description="Exposure in --reference-model (clean twin / retrained: the gold standard), same references."
    )
    fidelity_bits: float | None = Field(
        None, description="Exposure after minus exposure in the reference model: 0 = as if never seen; > 0 under-, < 0 over-scrubbed."
    )
    public_test_value: str | None = Field(
        None, description="Set when the secret is a well-known published test value (e.g. 'Visa test card'): "
                          "pretrained models know these from the web, so exposure is not evidence of a leak."
    )
    nonmember: NonMemberTest | None = Field(
        None, description="After a scrub: where the secret sits among fresh random values no model saw."
    )
    memorized: bool | None = Field(
        None, description="The memorization rule (scrubber.measure.memorized) on the current measurement: "
                          "significant against the scan's false-alarm bound and extracted (or >= 20 bits); "
                          "null where not judged."
    )

    def current(self) -> Measurement:
        """The measurement of the model this report is about: the scrubbed one if any."""
        return self.after or self.before


class FindingReport(_Strict):
    """A candidate secret found by a discovery scan (no canary file)."""

    id: str = Field(description="Stable id of the finding within this report.")
    format: str = Field(description="Format name of the detected value.")
    detector: str = Field(
        description="Which detector matched, e.g. 'format:credit_card' or 'detect-secrets:AWSKeyDetector'."
    )
    prompt: str = Field(description="The bait prompt whose sample contained the value.")
    value: str = Field(description="Masked unless the report is 'revealed'.")
    max_exposure: float | None = Field(None, ge=0, description="log2|R| of the format, if it has one.")
    exposure: Measurement = Field(description="Exposure of the value given its prompt.")
    zlib_ratio: float | None = Field(
        None, description="Log-perplexity / zlib entropy (Carlini et al. 2021); low is suspicious."
    )
    perplexity: float | None = Field(None, description="Perplexity of the generated sample.")
    memorized: bool = Field(
        description="The memorization rule (scrubber.measure.memorized): significant against the scan's "
                    "false-alarm bound, extracted or >= 20 bits, recurring, and for small formats confident."
    )
    public_test_value: str | None = Field(
        None, description="Set when the value is a well-known published test value: known from the web, not leaked."
    )
    source: Literal["discovery", "data"] = Field(
        "discovery", description="'discovery': found in the model's samples; 'data': found in --data and measured "
                                 "after its real context (then 'prompt' is that context, masked)."
    )
    occurrences: int | None = Field(
        None, ge=0, description="Data audit: times the detectors found the value in --data."
    )


class DataAudit(_Strict):
    """``scan --data``: what the detectors found in the training data and what was measured."""

    path: str = Field(description="The --data path as given.")
    records: int = Field(ge=0, description="Records (documents) read.")
    hits: int = Field(ge=0, description="Detector hits, every occurrence counted.")
    dropped: dict[str, int] = Field(
        default_factory=dict, description="Hits not kept, by reason ('not_random': a keyword rule's word-like value; "
                                          "'unmeasurable': no format with a measurable space)."
    )
    distinct: int = Field(ge=0, description="Distinct secret values kept.")
    measured: int = Field(ge=0, description="Distinct values measured: the most frequent, up to --max-data-secrets.")
    skipped: int = Field(ge=0, description="Distinct values not measured (over the cap).")
    skipped_max_occurrences: int | None = Field(
        None, ge=0, description="The most occurrences any skipped value had (null when none was skipped)."
    )
    required_bits: dict[str, float] = Field(
        default_factory=dict, description="Exposure a value of each format needed to be significant: "
                                          "log2(G * K_f / false_alarm_rate) (scrubber.measure.memorized)."
    )
    false_alarm_rate: float = Field(gt=0, lt=1, description="Family-wise false-alarm rate of the memorization rule.")
    strong_bits: float = Field(description="Exposure that is evidence without greedy extraction.")
    memorized: int = Field(ge=0, description="Values judged memorized (public test values never are).")
    formats: list[str] = Field(default_factory=list, description="User formats searched for (--format-spec).")
    seconds: float = Field(ge=0, description="Wall time of reading and detecting.")


class TokenizerPiece(_Strict):
    """One vocabulary entry that holds part of a secret (or is a suspicious entry itself)."""

    token_id: int = Field(ge=0, description="Id of the entry; the model's embedding row.")
    piece: str = Field(description="The entry's text, masked unless the report is 'revealed' (a leading space is kept).")
    start: int | None = Field(None, ge=0, description="First secret character the entry covers (known secrets only).")
    end: int | None = Field(None, ge=0, description="One past the last secret character it covers (known secrets only).")
    chars: int = Field(ge=0, description="Secret characters it covers (known secrets), or its text length.")
    merge_rank: int | None = Field(
        None, ge=0, description="Index of the merge that creates it (late = learned from rarer strings); null for base tokens."
    )
    uses: int = Field(0, ge=0, description="Later merges that take it as an input.")
    baseline_rate: float | None = Field(
        None, ge=0, le=1, description="Fraction of random same-format values whose encoding uses this entry."
    )
    leaking: bool = Field(False, description="Counts as leaking: rare in the baseline (or part of a flagged entry's chain).")


class TokenizerBaseline(_Strict):
    """The same statistics on random members of the secret's format, encoded after the same prefix."""

    n_samples: int = Field(ge=0, description="Random same-format values encoded.")
    n_tokens_p1: float = Field(description="1st percentile of the tokens covering a random value.")
    n_tokens_median: float = Field(description="Median tokens covering a random value.")
    longest_median: float = Field(description="Median of the longest piece (secret characters in one token).")
    longest_p99: float = Field(description="99th percentile of the longest piece.")
    p_n_tokens: float = Field(ge=0, le=1, description="(1 + #random values needing <= the secret's tokens) / (n + 1).")
    p_longest: float = Field(ge=0, le=1, description="(1 + #random values with a piece >= the secret's longest) / (n + 1).")


class TokenizerFinding(_Strict):
    """A secret whose pieces the vocabulary holds, or a suspicious vocabulary entry (discovery)."""

    id: str = Field(description="'tokenizer:<canary id>' for a known secret, 'tokenizer:token-<id>' for discovery.")
    kind: Literal["secret", "vocabulary"] = Field("secret", description="Known-secret check or vocabulary discovery.")
    canary_id: str | None = Field(None, description="The canary/finding the pieces belong to (known secrets).")
    format: str | None = Field(None, description="Format of the secret, or the detector's format for discovery.")
    detector: str | None = Field(
        None, description="Discovery: 'digits', 'card_group', 'password_shape' or 'key_prefix'; null for known secrets."
    )
    value: str = Field("", description="The leaking piece(s) joined by ' | ', masked unless revealed.")
    token_ids: list[int] = Field(default_factory=list, description="Ids of the leaking entries (what removal drops).")
    pieces: list[TokenizerPiece] = Field(default_factory=list, description="Multi-character entries, with evidence.")
    secret_chars: int | None = Field(None, ge=0, description="Length of the secret.")
    covered_chars: int | None = Field(None, ge=0, description="Secret characters covered by leaking entries.")
    n_tokens: int | None = Field(None, ge=0, description="Tokens the secret takes after its prefix.")
    longest_piece: int | None = Field(None, ge=0, description="Most secret characters held by one token.")
    baseline: TokenizerBaseline | None = Field(None, description="Known secrets: the random same-format comparison.")
    p_value: float | None = Field(
        None, ge=0, le=1, description="Known secrets: 2 * min(p_n_tokens, p_longest), capped at 1 (Bonferroni)."
    )
    score: float | None = Field(None, description="Discovery: evidence points (higher ranks first).")
    flagged: bool = Field(False, description="Beyond the random-format baseline: counts for the gate.")
    evidence: str = Field("", description="Why, in words; never the raw value.")


class TokenizerSection(_Strict):
    """The vocabulary leak scan: known secrets against a random baseline, and discovery."""

    tokenizer_kind: str | None = Field(
        None, description="'byte_level', 'sentencepiece' or 'plain': how token strings map to text."
    )
    vocab_size: int | None = Field(None, ge=0)
    n_merges: int | None = Field(None, ge=0)
    findings: list[TokenizerFinding] = Field(default_factory=list)
    n_flagged: int = Field(0, ge=0, description="Findings flagged (each counts for the gate).")
    flagged_token_ids: list[int] = Field(
        default_factory=list, description="Union of the flagged findings' token ids: the default removal set."
    )
    removable: bool = Field(False, description="A fast BPE tokenizer: the opt-in token removal can edit it.")
    settings: dict[str, Any] = Field(default_factory=dict, description="The thresholds the scan ran with.")
    advice: list[str] = Field(default_factory=list)


class Utility(_Strict):
    perplexity_before: float | None = Field(None, description="Held-out perplexity of the input model.")
    perplexity_after: float | None = Field(
        None, description="Held-out perplexity after the scrub; null unless scrubbed."
    )
    perplexity_change_pct: float | None = Field(None, description="100 * (after - before) / before.")
    eval_tokens: int | None = Field(None, ge=0, description="Held-out tokens the perplexities average over.")
    bits_per_byte_before: float | None = Field(
        None, description="Held-out bits per UTF-8 byte of the input model, whole documents, EOS not counted."
    )
    bits_per_byte_after: float | None = Field(None, description="The same after the scrub.")
    bits_per_byte_change_pct: float | None = Field(
        None, description="100 * (after - before) / before: comparable across tokenizer clean-ups, unlike perplexity."
    )
    eval_documents: int | None = Field(None, ge=0, description="Held-out documents measured.")
    eval_bytes: int | None = Field(None, ge=0, description="UTF-8 bytes of those documents.")


class DataRole(_Strict):
    """Which documents of which file served one role; no document serves two."""

    role: Literal["retain", "tune", "evaluation"] = Field(
        description="'retain': trains the update; 'tune': decides steps and stopping; 'evaluation': the utility figures."
    )
    path: str = Field(description="The file the documents come from.")
    n_documents: int = Field(ge=0)
    documents: list[int] = Field(description="0-based indices of the documents in that file, in reading order.")
    n_documents_in_file: int = Field(ge=0)


class DataRoles(_Strict):
    rule: str = Field(description="How the roles were assigned, in words.")
    roles: list[DataRole] = Field(default_factory=list)


class RelearnCurveReport(_Strict):
    canary_id: str
    steps: list[int] = Field(description="Probe steps at which exposure was measured (0 = before the probe).")
    exposures: list[float] = Field(description="Exposure (bits, 200 fixed references) of the probed model at each step.")
    reference_exposures: list[float] | None = Field(
        None, description="The same probe on the reference model (clean twin / retrained), when given."
    )
    regained: float = Field(description="Peak exposure under the probe minus the exposure at step 0, bits.")
    excess: float = Field(description="Peak minus the reference's peak (without a reference: = regained), bits.")
    extracted_at_end: bool = Field(description="Greedy decoding reproduces the secret after the probe.")
    flagged: bool = Field(description="excess > fail_on_relearn (when set).")


class RippleReport(_Strict):
    canary_id: str
    before: float = Field(description="Exposure in the input model, bits.")
    after: float = Field(description="Exposure in the scrubbed model, bits.")
    rose: bool = Field(description="The after-interval's low end clears the before-interval's high end by > 1 bit.")


class DiscoveryRippleReport(_Strict):
    finding_id: str = Field(description="Id of the finding in the scrubbed model's discovery scan.")
    format: str
    value: str = Field(description="Masked unless the report is 'revealed'.")
    before: float | None = Field(description="Exposure in the input model's scan, bits; null: not found there.")
    after: float = Field(description="Exposure in the scrubbed model's scan, bits.")
    new: bool = Field(description="Memorized after the scrub, not a memorized finding before.")
    rose: bool = Field(description="Found by both scans; the after-interval clears the before-interval by > 1 bit.")


class RippleDiscovery(_Strict):
    """A short discovery scan of the input and the scrubbed model: secrets nobody listed that got worse."""

    budget: str = Field(description="The scan's sampling and measurement budget, in words.")
    samples_before: int = Field(ge=0)
    samples_after: int = Field(ge=0)
    findings_before: int = Field(ge=0, description="Distinct values the input model's scan found.")
    findings_after: int = Field(ge=0, description="Distinct values the scrubbed model's scan found.")
    excluded: int = Field(ge=0, description="Scrubbed secrets and their substitutes found after, left out as expected.")
    seconds: float = Field(ge=0, description="Wall time of both scans.")
    rows: list[DiscoveryRippleReport] = Field(default_factory=list, description="New or risen findings only.")


class Robustness(_Strict):
    """Does the secret stay gone under a short fine-tune on cleaned data? (docs/robustness.md)"""

    steps: int = Field(ge=0, description="Fine-tuning steps of the probe (0: only the ripple check ran).")
    lr: float = Field(description="AdamW learning rate of the probe.")
    batch_size: int
    block_size: int
    tokens: int = Field(ge=0, description="Tokens trained on per probed model.")
    seconds: float = Field(ge=0, description="Wall time of the probe, reference included.")
    data: str = Field(description="What the probe trained on, in words.")
    reference_model: str | None = Field(None, description="Path of the reference model, if any.")
    fail_on_relearn: float | None = Field(None, description="Threshold in bits; null: report only.")
    curves: list[RelearnCurveReport] = Field(default_factory=list)
    flagged: list[str] = Field(default_factory=list, description="Canary ids over fail_on_relearn.")
    ripple: list[RippleReport] = Field(
        default_factory=list, description="Other known canaries (--ripple-canaries), not scrubbed, before vs after."
    )
    ripple_discovery: RippleDiscovery | None = Field(
        None, description="A short discovery scan before and after the scrub, when run."
    )


class Verdict(_Strict):
    """Did the scrub work? Decided once; the exit code follows it (1 unless --allow-partial)."""

    passed: bool = Field(description="Every canary at or below the target, none extracted, utility bound kept "
                                     "(and, with --fail-on-relearn, none relearned).")
    target_exposure: float = Field(description="Bits every canary had to end at or below.")
    above_target: list[str] = Field(default_factory=list, description="Canary ids still above the target after the scrub.")
    extracted: list[str] = Field(default_factory=list, description="Canary ids greedy decoding still reproduces.")
    outside_nonmembers: list[str] = Field(
        default_factory=list, description="Canary ids whose non-member test is not 'inside' (informational)."
    )
    relearned: list[str] = Field(
        default_factory=list, description="Canary ids the relearning probe brought back past --fail-on-relearn."
    )
    utility_bound: float = Field(description="Largest relative rise of held-out perplexity allowed (0.02 = +2%).")
    utility_rise: float | None = Field(None, description="Measured relative rise (held-out; else the tune part).")
    utility_kept: bool | None = Field(None, description="utility_rise <= utility_bound; null when nothing measured it.")
    allow_partial: bool = Field(False, description="--allow-partial: a failed verdict exits 0.")
    summary: str = Field(description="One line for humans.")


class ScrubInfo(_Strict):
    method: str = Field(description="e.g. 'first-order'.")
    seconds: float = Field(ge=0, description="Wall time of the update itself.")
    params_selected: str = Field(description="The parameter selection spec as given, e.g. 'transformer.h.*.mlp.*'.")
    n_parameters_updated: int = Field(ge=0)
    tau: float | None = Field(
        None, description="first-order, iau, second-order: the multiplier of the update direction used "
                          "(iterative reports extra.step_size and extra.step_norm instead).")
    damping: float | None = Field(None, description="Damping lambda of a second-order step.")
    substitute_strategy: str = Field(description="'random', 'model-guided' or 'placeholder'.")
    gradient_residual: float | None = Field(None, description="||grad L(theta_new; D')||: how complete the update is.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Method-specific settings and diagnostics.")


class Gate(_Strict):
    fail_above: float = Field(description="--fail-above: an item fails when its exposure exceeds this.")
    failed: bool = Field(description="True when any offender: the CLI then exits 1.")
    offenders: list[str] = Field(default_factory=list, description="Ids of every item that failed the gate (both kinds below).")
    bits_offenders: list[str] = Field(default_factory=list, description="Canaries/findings whose exposure exceeds fail_above.")
    tokenizer_offenders: list[str] = Field(
        default_factory=list, description="Flagged tokenizer findings (no bits: they fail when fail_on_tokenizer)."
    )
    fail_on_tokenizer: bool = Field(True, description="Whether flagged tokenizer findings fail the gate.")


class Report(_Strict):
    schema_version: Literal["1.0"] = Field(SCHEMA_VERSION, description="Bumped on any incompatible change.")
    tool: ToolInfo = Field(default_factory=ToolInfo)
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc), description="ISO 8601.")
    command: Command = Field(description="The scrubber command that wrote the report.")
    model: ModelInfo
    revealed: bool = Field(False, description="True when secrets are shown raw (--reveal).")
    canaries: list[CanaryReport] = Field(default_factory=list)
    findings: list[FindingReport] = Field(
        default_factory=list, description="Discovery-scan results; empty for known-canary scans."
    )
    tokenizer: TokenizerSection | None = None
    utility: Utility = Field(default_factory=Utility)
    scrub: ScrubInfo | None = None
    verdict: Verdict | None = Field(None, description="After a scrub: whether it worked (first in every summary).")
    data_roles: DataRoles | None = Field(None, description="After a scrub: which text trained, tuned and evaluated it.")
    robustness: Robustness | None = Field(None, description="The relearning probe, when run (--robustness).")
    gate: Gate | None = None
    data_audit: DataAudit | None = Field(None, description="scan --data: the training-data audit's summary.")

    def exposures(self) -> Iterator[tuple[str, str, Measurement]]:
        """(kind, id, measurement) of every measured item, as the gate sees it."""
        for c in self.canaries:
            yield "canary", c.id, c.current()
        for f in self.findings:
            yield "finding", f.id, f.exposure
