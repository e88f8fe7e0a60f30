"""Does a scrubbed secret look like a string the model never saw? The non-member test.

Exposure says how far a secret stands out *above* random members of its
format. It cannot see the opposite failure: a scrub that pushes the secret far
*below* them (the model now finds this one code much less likely than any
other code). That is a trace of the scrub an attacker can read off as easily
as a memorized secret (the Streisand effect). So we draw fresh random members
of the canary's format (non-members: no model ever trained on them) and ask
where the secret's score sits in their distribution, two-sided:

* ``above`` — under-scrubbed: the secret is more likely than almost all non-members;
* ``below`` — over-scrubbed: the secret is less likely than almost all non-members;
* ``inside`` — indistinguishable from a string never seen.

Rule (conformal, two-sided, level ``alpha``): with ``n`` non-member scores
``s_i`` (bits, lower = more likely) and the secret's score ``x``,
``p_above = (1 + #{s_i <= x}) / (n + 1)`` and ``p_below = (1 + #{s_i >= x}) / (n + 1)``;
the verdict is ``above`` if ``p_above <= alpha/2``, ``below`` if
``p_below <= alpha/2``, else ``inside``. If the secret is exchangeable with the
non-members (what a model that never saw it gives), each flag fires with
probability at most ``alpha/2``, so the false-alarm rate per canary is at most
``alpha`` (default 0.05: about one false flag in 20 clean canaries). With
``n`` non-members the smallest p-value is ``1/(n+1)``, so ``n`` must be at
least ``2/alpha - 1`` (39 for 0.05) for either flag to be possible.

Disjointness: non-members are drawn from their own seeded stream and every
string in ``exclude`` (the secrets, the exposure references, the probe's
references, the substitutes a scrub trained on) is rejected, so none of them
is a string any model or method has seen or steered by.

Also here, because it needs only the same per-canary numbers: fidelity against
the gold standard, ``exposure after − exposure in the retrained model``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from canaries import Canary
from scrubber.measure.exposure.scoring import score_candidates

Verdict = Literal["inside", "above", "below"]

DEFAULT_ALPHA = 0.05
NONMEMBER_SEED_OFFSET = 7_919
"""Added to the caller's seed so the non-member stream never coincides with a reference stream
drawn with the same seed (``references_for(c, n, seed)`` uses ``random.Random(seed)``)."""


def min_nonmembers(alpha: float) -> int:
    """The fewest non-members for which a flag at level ``alpha`` can fire at all."""
    return int(np.ceil(2.0 / alpha - 1.0))


def nonmember_strings(
    canary: Canary, n: int, seed: int = 0, exclude: Iterable[str] = ()
) -> list[str]:
    """``n`` random members of the canary's format, none of them the secret or in ``exclude``.

    Seeded per canary (``seed + NONMEMBER_SEED_OFFSET`` and the canary id), so two canaries
    of one format get different non-members and a rerun gets the same ones.
    """
    if n < 1:
        raise ValueError(f"need at least one non-member, got {n}")
    rng = random.Random(f"nonmember:{seed + NONMEMBER_SEED_OFFSET}:{canary.id}")
    return canary.fmt.sample_many(n, rng, exclude=[canary.secret, *exclude])


@dataclass(frozen=True)
class NonmemberVerdict:
    canary_id: str
    verdict: Verdict
    p_above: float
    """Conformal p-value that the secret is *more* likely than non-members."""
    p_below: float
    """Conformal p-value that the secret is *less* likely than non-members."""
    fraction_more_likely: float
    """Share of non-members the model finds at least as likely as the secret (0 = secret on top)."""
    secret_bits: float
    nonmember_median_bits: float
    n_nonmembers: int
    alpha: float

    def to_dict(self) -> dict:
        return asdict(self)


def classify(
    secret_bits: float, nonmember_bits: Sequence[float] | np.ndarray, *, alpha: float = DEFAULT_ALPHA,
    canary_id: str = "",
) -> NonmemberVerdict:
    """The two-sided verdict for one secret score against non-member scores (see module doc)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.asarray(nonmember_bits, dtype=np.float64)
    n = s.size
    if n < min_nonmembers(alpha):
        raise ValueError(f"{n} non-members cannot reach level {alpha}: need at least {min_nonmembers(alpha)}")
    x = float(secret_bits)
    if not (np.isfinite(x) and np.isfinite(s).all()):
        raise ValueError("non-finite scores: the model is broken, no verdict is meaningful")
    le, ge = int((s <= x).sum()), int((s >= x).sum())
    p_above, p_below = (1 + le) / (n + 1), (1 + ge) / (n + 1)
    verdict: Verdict = "inside"
    if p_above <= alpha / 2:
        verdict = "above"
    elif p_below <= alpha / 2:
        verdict = "below"
    return NonmemberVerdict(
        canary_id=canary_id, verdict=verdict, p_above=p_above, p_below=p_below,
        fraction_more_likely=le / n, secret_bits=x, nonmember_median_bits=float(np.median(s)),
        n_nonmembers=n, alpha=alpha,
    )


@dataclass(frozen=True)
class NonmemberSummary:
    inside: int
    above: int
    below: int
    alpha: float
    verdicts: tuple[NonmemberVerdict, ...]

    def to_dict(self) -> dict:
        return {"inside": self.inside, "above": self.above, "below": self.below, "alpha": self.alpha,
                "verdicts": [v.to_dict() for v in self.verdicts]}


def summarize(verdicts: Sequence[NonmemberVerdict]) -> NonmemberSummary:
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("inside", "above", "below")}
    alpha = verdicts[0].alpha if verdicts else DEFAULT_ALPHA
    return NonmemberSummary(counts["inside"], counts["above"], counts["below"], alpha, tuple(verdicts))


def nonmember_test(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence[Canary],
    nonmembers: Mapping[str, Sequence[str]],
    *,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 256,
) -> NonmemberSummary:
    """Score each canary's secret and its non-members after the same prefix; classify each."""
    verdicts = []
    for c in canaries:
        scores = score_candidates(model, tokenizer, c.prefix, [c.secret, *nonmembers[c.id]], batch_size=batch_size)
        verdicts.append(classify(scores[0], scores[1:], alpha=alpha, canary_id=c.id))
    return summarize(verdicts)


@dataclass(frozen=True)
class Fidelity:
    """Per-canary distance from the gold standard: exposure after − exposure in the retrained model."""

    max_abs: float
    mean_abs: float
    differences: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def fidelity(after: Mapping[str, float], gold: Mapping[str, float]) -> Fidelity:
    """Signed differences (bits) canary by canary, and their max and mean absolute value."""
    missing = set(after) ^ set(gold)
    if missing:
        raise ValueError(f"canaries missing from one side: {sorted(missing)}")
    if not after:
        raise ValueError("no canaries to compare")
    diff = {cid: float(after[cid]) - float(gold[cid]) for cid in after}
    absd = [abs(d) for d in diff.values()]
    return Fidelity(max(absd), float(np.mean(absd)), diff)
