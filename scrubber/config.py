"""Validated options for every command; YAML presets use the same keys as the CLI flags.

One flat model per command keeps ``--config preset.yaml`` and the flags in
one-to-one correspondence: a key in YAML is a flag without the dashes
(``n_references`` = ``--n-references``). Flags given on the command line win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scrubber.errors import ScrubberError

ExposureMethod = Literal["auto", "exact", "search", "extrapolated", "interpolated"]
ScrubMethod = Literal["first-order", "second-order", "iau", "iterative", "certified-head"]
SubstituteStrategy = Literal["random", "model", "placeholder"]
ReportFormat = Literal["json", "md", "html", "sarif"]
DType = Literal["float32", "bfloat16", "float16"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoadOptions(_Options):
    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str = "auto"
    """``auto`` picks CUDA when present, else CPU."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; None = 1 for models under 20M parameters or on machines with at
    most 2 cores, else torch's default."""
    device_map: str | None = None
    """``auto``: let accelerate place a model larger than one device across the devices
    (and CPU); the model is then not moved to ``device``."""
    dtype: DType = "float32"
    """Weights' dtype for loading, scoring and updates; log-softmax is taken in float32 regardless."""


class ExposureOptions(_Options):
    exposure_method: ExposureMethod = "auto"
    n_references: int = Field(1000, ge=10)
    exact_limit: int = Field(100_000, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    exposure_seconds: float | None = Field(10.0, gt=0)
    """Time budget per canary for exposure (references, exact enumeration, search), seconds;
    None = unbounded. The first 32 references are always scored; a search that runs out falls
    back to the extrapolated estimate and the report says why (``fallback_reason``)."""
    exposure_flops: float | None = Field(None, gt=0)
    """Budget per canary in model FLOPs (2 x parameters per token); None = no FLOPs bound."""
    adaptive_references: bool = True
    """Stop scoring references once the interval is decisive (n_references is then the maximum);
    false = always score n_references."""


class ReportOptions(_Options):
    report: Path | None = None
    """Report path: ``out/scan.json`` is written as given (format from the extension);
    a base without a known extension writes ``BASE.<format>`` for each format."""
    formats: list[ReportFormat] = ["json", "md"]
    """Formats to write; when not set, a report path's known extension decides."""
    reveal: bool = False
    fail_above: float | None = None
    """CI gate: exit 1 when any exposure after the run exceeds this many bits."""
    fail_on_tokenizer: bool = True
    """With the gate on, flagged tokenizer findings fail it too (they carry no bits)."""


class ScanConfig(LoadOptions, ExposureOptions, ReportOptions):
    canaries: Path | None = None
    tokenizer_scan: bool = True
    """Also scan the tokenizer's vocabulary for secret pieces (issue: the vocabulary leaks too)."""
    eval_data: Path | None = None
    max_eval_tokens: int = Field(100_000, ge=128)


class DataAuditOptions(_Options):
    """``scan --data``: audit the model against the data it was trained on (docs/scanning.md)."""

    data: Path | None = None
    """Training data to audit: plain text (documents separated by blank lines), JSON Lines
    (``text_field``) or a saved ``datasets`` directory (its train split first); read streamed."""
    text_field: str = Field("text", min_length=1)
    """Text field of JSON Lines records and dataset rows."""
    format_spec: list[str] = Field(default_factory=list)
    """Extra secret formats to detect as bare values: pattern specs (``EMP-[0-9]{6}``) or
    names (``digits8``), as canary files take them."""
    max_data_secrets: int = Field(200, ge=1)
    """Distinct values measured at most, the most frequent first; the rest are counted as skipped."""
    data_context_chars: int = Field(200, ge=8)
    """Characters of a record before a value that serve as its prefix (cut at a word boundary)."""
    data_max_documents: int = Field(256, ge=1)
    """Distinct records kept per emitted secret as its canary's documents (what scrub edits)."""

    @field_validator("format_spec")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        from canaries.formats import get_format

        for spec in v:
            get_format(spec)  # FormatError (a ValueError) -> one-line option error
        return v


METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "tau": ("first-order", "iau", "second-order"),
    "step_size": ("iterative",),
    "max_steps": ("iterative",),
    "retain_weight": ("iterative",),
    "damping": ("second-order",),
    "solver": ("second-order",),
    "curvature": ("second-order",),
    "newton_steps": ("second-order",),
    "train_tokens": ("second-order", "certified-head"),
    "l2": ("certified-head",),
}
"""Scrub options that only some methods read."""


class ScrubConfig(ScanConfig):
    out: Path | None = None
    force: bool = False
    method: ScrubMethod = "iterative"
    params: str = "all"
    """What the update may change: presets (all, mlp, attn, lm_head, embeddings, lora),
    block ranges (-2:), combinations (-2:/mlp), globs or re:<regex>; comma-separated; or
    auto: the tensors the secrets' gradients sit on, measured before the update (docs/method.md)."""
    localize_mass: float = Field(0.8, gt=0, le=1)
    """--params auto: share of the localisation score the chosen tensors must cover."""
    lora: bool = False
    """Put the update in a fresh LoRA adapter instead of the selected weights."""
    lora_rank: int = Field(8, ge=1)
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for updates of large models, ~30% more time."""
    merge_lora: bool = False
    tau: float | None = Field(None, gt=0)
    """first-order, iau, second-order: the multiplier of the method's update direction; None
    chooses it on the probe (the smallest that meets the target within the utility bound)."""
    step_size: float | None = Field(None, gt=0)
    """iterative: each step's norm relative to the selected weights' scale (default 2e-4)."""
    damping: float | None = Field(None, gt=0)
    """second-order: Tikhonov λ of (C + λI)⁻¹; None = 1e-2 of the top curvature eigenvalue."""
    solver: Literal["cg", "lissa", "kfac"] = "cg"
    """second-order: how the damped curvature system is solved; kfac fits EK-FAC factors once on the retain text."""
    curvature: Literal["ggn", "hessian"] = "ggn"
    """second-order with cg/lissa: Gauss-Newton (PSD) or the exact Hessian (indefinite on LMs)."""
    newton_steps: int = Field(3, ge=1)
    """second-order: re-linearised Newton steps at most; each step's length chosen on the probe."""
    train_tokens: int | None = Field(None, ge=1)
    """second-order, certified-head: tokens in the training set; scales the curvature so that
    --tau 1 is the paper's Newton step (None: the retain sample's tokens)."""
    l2: float | None = Field(None, gt=0)
    """certified-head: L2 strength μ; the reported bound is ‖∇F‖/μ (None: 1e-3 × top curvature)."""
    target_exposure: float = Field(3.0, ge=0)
    """Auto step size aims for every canary at or below this exposure (bits)."""
    max_retain_increase: float = Field(0.02, ge=0)
    """Bound on the relative perplexity rise on the retain sample (0.02 = +2%)."""
    max_steps: int = Field(60, ge=1)
    """iterative: the step budget."""
    retain_weight: float = Field(100.0, ge=0)
    """Weight of the retain-sample loss (IAU's gradient correction) in iterative steps."""
    substitute: SubstituteStrategy = "random"
    loss_span: Literal["secret", "sequence"] = "secret"
    retain_data: Path | None = None
    """Training-like text for the retain term (90%) and the utility bound (10%, by document);
    without it, --eval-data is split by document into evaluation, tune and retain parts."""
    n_nonmembers: int = Field(200, ge=39)
    """Fresh random values per canary for the non-member test (39 is the least for alpha 0.05)."""
    nonmember_alpha: float = Field(0.05, gt=0, lt=1)
    """Two-sided false-alarm rate of the non-member test per canary."""
    robustness: bool = False
    """After the scrub, run the relearning probe (docs/robustness.md): a short fine-tune on cleaned data."""
    relearn_steps: int = Field(30, ge=1)
    relearn_lr: float = Field(5e-4, gt=0)
    reference_model: Path | None = None
    """Clean twin or retrained model: the relearning probe runs on it too, as "never seen"."""
    ripple_canaries: Path | None = None
    """Other known canaries (not scrubbed): measured before and after, any rise reported."""
    ripple_discovery: bool = False
    """A short discovery scan before and after the scrub: secrets nobody listed that are new or rose."""
    fail_on_relearn: float | None = Field(None, ge=0)
    """Verdict fails when a canary's exposure under the probe rises more than this many bits
    above the reference's under the same probe (without a reference: above its own start)."""
    allow_partial: bool = False
    """Exit 0 even when the verdict says the scrub missed (best effort); the report still says so."""
    drop_leaking_tokens: bool = False
    """Opt-in: remove flagged vocabulary entries (ids kept stable) from the scrubbed tokenizer."""

    @model_validator(mode="after")
    def _options_of_another_method(self) -> "ScrubConfig":
        """One meaning per option: an option the chosen method ignores, set to anything but its
        default, is a mistake (e.g. --tau with iterative, whose step is --step-size), not a no-op."""
        for name, methods in METHOD_OPTIONS.items():
            value = getattr(self, name)
            if self.method not in methods and value is not None and value != type(self).model_fields[name].default:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} applies to {' and '.join(methods)} only, not {self.method}")
        if self.localize_mass != type(self).model_fields["localize_mass"].default and self.params != "auto":
            raise ValueError("--localize-mass applies to --params auto only")
        if self.params == "auto" and self.lora:
            # a fresh adapter's A has zero gradient while B = 0: nothing to localise on
            raise ValueError("--params auto does not combine with --lora (a new adapter has no gradients to score)")
        return self


class DemoConfig(ScrubConfig):
    drop_leaking_tokens: bool = True
    rebuild: bool = False
    cache_dir: Path | None = None
    epochs: int = Field(8, ge=1)
    grad_restriction_alpha: float = Field(0.0, ge=0)
    quick: bool = False
    """The reduced demo (DemoSpec.quick): every stage and the report contract in about a minute."""


def load_config(cls: type[_Options], path: Path | None, overrides: dict[str, Any]) -> Any:
    """YAML (if given) then the flags the user actually set, validated together."""
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ScrubberError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}" if where else ""
            raise ScrubberError(f"{path}: invalid YAML{at}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ScrubberError(f"{path}: expected a mapping of option names to values")
        data.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        src = f"{path}: " if path is not None else ""
        if e["type"] == "extra_forbidden":
            raise ScrubberError(f"{src}unknown option {loc!r}") from None
        if not e["loc"]:  # a rule across options (a model validator)
            raise ScrubberError(f"{src}{e['msg'].removeprefix('Value error, ')}") from None
        raise ScrubberError(f"{src}option {loc!r}: {e['msg']}") from None
