"""Budgets for work that grows with the model, in wall-clock seconds and/or model FLOPs.

Why not nodes or candidates: the cost of one search expansion or one scored
reference is a model row, which is a thousand times dearer on a 135M-parameter
model than on the project's 1M demo models; a budget in expansions that is
instant on one runs for tens of minutes on the other.  Seconds bound what a
user waits; FLOPs (``2 * n_parameters`` per token through the model, the
usual forward-pass count) make a bound reproducible across machines.

A :class:`Budget` is charged by whoever does the work and asked, before each
next piece, whether that piece still fits.  :func:`estimate_exposure` turns
planned token counts into the one-line cost estimate printed before a run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

DEFAULT_EXPOSURE_SECONDS = 10.0
"""Default time budget per canary for exposure (references, exact enumeration, search).

Chosen so a 4-canary known-canary scan of SmolLM2-135M on 2 CPU cores stays
within 60 s including model load, the extraction check and the tokenizer scan
(measured by ``eval/bench_real_scan.py``)."""

FLOPS_PER_PARAMETER_TOKEN = 2.0
"""Forward pass: one multiply-add per parameter per token."""

Exhausted = Literal["time", "flops"]


def flops_per_token(n_parameters: int) -> float:
    """Model FLOPs to run one token forward: ``2 * n_parameters``."""
    if n_parameters < 0:
        raise ValueError(f"n_parameters must be >= 0, got {n_parameters}")
    return FLOPS_PER_PARAMETER_TOKEN * n_parameters


@dataclass
class Budget:
    """At most ``seconds`` of wall-clock time and/or ``flops`` model FLOPs; None = unbounded.

    The clock starts at construction.  ``charge`` records FLOPs spent;
    ``fits`` says whether a further piece of work of the given estimated cost
    still fits; ``exhausted`` says which bound (if any) is already used up.
    """

    seconds: float | None = None
    flops: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    spent_flops: float = field(default=0.0, init=False)
    _start: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("seconds", "flops"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"budget {name} must be a finite number >= 0 or None, got {v}")
        self._start = self.clock()

    @property
    def bounded(self) -> bool:
        return self.seconds is not None or self.flops is not None

    @property
    def elapsed(self) -> float:
        return self.clock() - self._start

    def charge(self, flops: float) -> None:
        if flops < 0:
            raise ValueError(f"cannot charge negative FLOPs ({flops})")
        self.spent_flops += flops

    def remaining_seconds(self) -> float | None:
        return None if self.seconds is None else max(0.0, self.seconds - self.elapsed)

    def remaining_flops(self) -> float | None:
        return None if self.flops is None else max(0.0, self.flops - self.spent_flops)

    def exhausted(self) -> Exhausted | None:
        if self.seconds is not None and self.elapsed >= self.seconds:
            return "time"
        if self.flops is not None and self.spent_flops >= self.flops:
            return "flops"
        return None

    def fits(self, seconds: float = 0.0, flops: float = 0.0) -> Exhausted | None:
        """None when work costing about ``seconds`` and ``flops`` fits; else the bound it breaks."""
        left_s, left_f = self.remaining_seconds(), self.remaining_flops()
        if left_s is not None and (left_s <= 0 or seconds > left_s):
            return "time"
        if left_f is not None and (left_f <= 0 or flops > left_f):
            return "flops"
        return None

    def describe(self) -> str:
        parts = []
        if self.seconds is not None:
            parts.append(f"{self.seconds:g} s")
        if self.flops is not None:
            parts.append(f"{self.flops:.2g} FLOPs")
        return " and ".join(parts) or "unbounded"


@dataclass(frozen=True)
class CostEstimate:
    """Planned work before a run: FLOPs, time at a measured rate, the budget's bound, memory."""

    flops: float
    seconds: float | None  # flops / measured FLOP/s; None without a rate
    bound_seconds: float | None  # what the time budget allows at most; None when unbounded
    memory_bytes: int
    tokens: int

    def describe(self, what: str) -> str:
        t = "?" if self.seconds is None else _duration(self.seconds)
        line = f"estimate for {what}: up to {self.tokens:,} tokens ≈ {self.flops:.2g} FLOPs ≈ {t}"
        if self.bound_seconds is not None:
            line += f", at most {_duration(self.bound_seconds)} by the time budget"
        return line + f"; memory ≈ {self.memory_bytes / 2**30:.2f} GiB"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def estimate_exposure(
    n_parameters: int,
    tokens_per_canary: list[int],
    *,
    flop_rate: float | None,
    per_canary: Budget | None,
    weight_bytes: int,
    activation_bytes: int = 0,
) -> CostEstimate:
    """Cost of scoring ``tokens_per_canary[i]`` planned tokens for each canary.

    The time is the planned FLOPs at ``flop_rate`` (FLOP/s, measured on the
    model), the bound the per-canary budget puts on it (times the number of
    canaries), and memory the weights plus one batch's activations.
    """
    tokens = int(sum(tokens_per_canary))
    flops = flops_per_token(n_parameters) * tokens
    seconds = flops / flop_rate if flop_rate else None
    bound = None
    if per_canary is not None and per_canary.seconds is not None:
        bound = per_canary.seconds * len(tokens_per_canary)
        if seconds is not None:
            bound = min(bound, seconds)
    return CostEstimate(
        flops=flops,
        seconds=seconds,
        bound_seconds=bound,
        memory_bytes=int(weight_bytes + activation_bytes),
        tokens=tokens,
    )
