"""Options of a discovery scan; YAML keys mirror the ``scrubber scan`` flags.

:class:`DiscoveryOptions` is mixed into :class:`DiscoverScanConfig`, the
config of ``scrubber scan`` (known canaries and discovery in one file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from scrubber.config import ScanConfig, _Options
from scrubber.discovery.baits import parse_bait
from scrubber.measure.memorized import DEFAULT_ALPHA, MIN_PROBABILITY, MemorizationRule

#: Exposure that counts as evidence without greedy extraction (the old fixed threshold);
#: memorization itself is decided by scrubber.measure.memorized (docs/scanning.md).
DEFAULT_THRESHOLD_BITS = 20.0


class DiscoveryOptions(_Options):
    discover: bool = False
    """Run discovery as well when a canary file is given (always on without one)."""
    baits: list[Any] = Field(default_factory=list)
    """Extra bait prompts: strings, or {text, kind} mappings (kind: credit_card,
    password, api_key, digits, any)."""
    default_baits: bool = True
    """Use the built-in bait prompts (scrubber.discovery.baits.DEFAULT_BAITS)."""
    samples_per_bait: int = Field(32, ge=0, le=10_000)
    unconditional_samples: int = Field(64, ge=0, le=100_000)
    """Samples started from the document-start token alone."""
    max_new_tokens: int = Field(32, ge=1, le=4096)
    """Tokens generated after a bait."""
    unconditional_tokens: int = Field(128, ge=1, le=4096)
    """Tokens generated from the document-start token."""
    top_k: int = Field(40, ge=0)
    """0 disables top-k filtering."""
    temperature: float = Field(1.0, gt=0, le=10)
    greedy: bool = True
    """Add greedy continuations per bait (from each of its branch_top first tokens)."""
    branch_top: int = Field(8, ge=0, le=256)
    """Also continue greedily from each of the bait's top-N first tokens (0/1: off)."""
    sample_batch_size: int = Field(64, ge=1)
    memorization_threshold: float = Field(DEFAULT_THRESHOLD_BITS, ge=0)
    """Exposure that counts as evidence without greedy extraction (scrubber.measure.memorized);
    below it a value must also be greedily extracted, and significant at false_alarm_rate."""
    false_alarm_rate: float = Field(DEFAULT_ALPHA, gt=0, lt=1)
    """Family-wise false-alarm rate alpha of the memorization rule: a value among K_f of its
    format (G formats tested) is significant when G * K_f * 2^-exposure <= alpha."""
    min_value_probability: float = Field(MIN_PROBABILITY, gt=0, le=1)
    """Discovery, formats under memorization_threshold bits: probability the model must give
    the whole value after its context (a favourite number ranks 1 of 10^6 by construction)."""
    min_repeats: int = Field(2, ge=1)
    """A memorized value must also recur: held exactly by at least this many generations,
    or produced by greedy decoding from its prefix (see docs/scanning.md)."""
    contexts_per_value: int = Field(1, ge=1, le=16)
    """Distinct contexts a value is measured in (the highest exposure counts)."""
    screen_references: int = Field(128, ge=0)
    """References a candidate is first measured against; those reaching half the
    threshold are measured against n_references (0: always the full set)."""
    max_candidates: int = Field(500, ge=1)
    """Candidates measured at most (most frequent first); the rest are dropped."""
    anchor_search: bool = True
    """Format-anchored search over the model's own samples (scrubber.discovery.anchors):
    continue greedily wherever its next token is confidently the start of a number or key."""
    anchor_contexts: int = Field(512, ge=1, le=1_000_000)
    """Samples read for anchors (one forward pass each): unconditional ones first."""
    anchor_top: int = Field(96, ge=0, le=100_000)
    """Anchors continued, strongest first (each gives anchor_branches greedy branches)."""
    anchor_branches: int = Field(3, ge=1, le=64)
    """Greedy branches per anchor: its likeliest secret-starting token, then the likeliest overall."""
    anchor_min_mass: float = Field(0.25, gt=0, le=1)
    """Next-token probability on secret-starting tokens that makes a position an anchor."""
    anchor_seeds: bool = True
    """Count the vocabulary entries the tokenizer scan reports (a card's digit group learned as
    one token) as secret-starting tokens."""
    high_entropy: bool = False
    """Also run detect-secrets' high-entropy plugins (noisy on prose)."""
    emit_canaries: Path | None = None
    """Write memorized findings as a canary file (raw secrets, mode 0600)."""

    def memorization_rule(self) -> MemorizationRule:
        return MemorizationRule(alpha=self.false_alarm_rate, strong_bits=self.memorization_threshold,
                                min_probability=self.min_value_probability)

    @field_validator("baits")
    @classmethod
    def _check_baits(cls, v: list[Any]) -> list[Any]:
        for item in v:
            parse_bait(item)  # ValueError -> one-line validation message
        return v


class DiscoverScanConfig(ScanConfig, DiscoveryOptions):
    """``scrubber scan``: known canaries (``canaries``) and/or discovery."""
