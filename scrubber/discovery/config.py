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

#: Default memorization threshold in bits; see docs/scanning.md for the derivation.
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
    """A finding is memorized when its exposure is at least this many bits."""
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
    high_entropy: bool = False
    """Also run detect-secrets' high-entropy plugins (noisy on prose)."""
    emit_canaries: Path | None = None
    """Write memorized findings as a canary file (raw secrets, mode 0600)."""

    @field_validator("baits")
    @classmethod
    def _check_baits(cls, v: list[Any]) -> list[Any]:
        for item in v:
            parse_bait(item)  # ValueError -> one-line validation message
        return v


class DiscoverScanConfig(ScanConfig, DiscoveryOptions):
    """``scrubber scan``: known canaries (``canaries``) and/or discovery."""
