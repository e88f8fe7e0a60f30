"""Is a candidate memorized, or just plausible-looking?

Primary signal: **exposure** (Carlini et al. 2019) of the value given the text
the model generated before it, against uniformly random members of the value's
format, from the exposure engine. A value the model merely made up ranks like a
random member of its format: P(exposure ≥ t) = 2^-t. Whether that is memorized is
decided by :mod:`scrubber.measure.memorized`, the one rule the whole tool uses: a
false-alarm bound over the candidates the scan tested (per format, so small formats
count), plus extraction or 20+ bits, recurrence, and for small formats confidence;
see docs/scanning.md.

Secondary columns, as in Carlini et al. 2021 ("Extracting Training Data from
Large Language Models"): the sample's **perplexity** under the model, and the
**zlib ratio** = bits the model needs for the sample / bits zlib needs for it
(8 × compressed length). Memorized text is easy for the model but not for a
generic compressor: a low ratio is suspicious. They order, they do not decide.
"""

from __future__ import annotations

import inspect
import math
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from canaries.canary import Canary
from canaries.formats import get_format
from canaries.mask import mask_secret
from scrubber.config import ExposureOptions
from scrubber.measure.context import encode_prompt
from scrubber.discovery.candidates import Candidate, Occurrence
from scrubber.measure.canary import canary_budget
from scrubber.measure.exposure.engine import ExposureResult, measure_exposure
from scrubber.measure.extraction import greedy_extracts
from scrubber.measure.memorized import Decision, MemorizationRule, decide, required_bits, effective_tests

_LN2 = math.log(2.0)
#: Values whose screening exposure reaches this fraction of the threshold get the full measurement.
SCREEN_FRACTION = 0.5
#: Distinct contexts tried for greedy extraction of a significant value that its best one does not recite.
EXTRACT_CONTEXTS = 4
_ENGINE_PARAMS = frozenset(inspect.signature(measure_exposure).parameters)
_INFERRED_KINDS = ("password", "api_key", "high_entropy")


@dataclass
class Judgement:
    candidate: Candidate
    occurrence: Occurrence
    """The context whose exposure counts (the highest of those measured)."""
    result: ExposureResult
    extracted: bool
    perplexity: float | None
    zlib_ratio: float | None
    memorized: bool
    decision: Decision | None = None
    """The memorization rule's reasoning (false-alarm bound, bits needed, why not)."""

    @property
    def exposure(self) -> float:
        return self.result.exposure

    def masked_value(self) -> str:
        c = self.candidate
        return mask_secret(c.value, None if c.kind in _INFERRED_KINDS else get_format(c.format))


def zlib_bits(text: str) -> int:
    return 8 * len(zlib.compress(text.encode("utf-8"), 9))


@torch.inference_mode()
def sample_bits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[float, int]:
    """Total -log2 p of ``text``'s tokens after the document start, and their count."""
    ids = encode_prompt(tokenizer, text)
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit:
        ids = ids[:limit]
    n_ctx = len(encode_prompt(tokenizer, "")) or 1
    if len(ids) <= n_ctx:
        return 0.0, 0
    x = torch.tensor([ids], device=next(model.parameters()).device)
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
    tgt = x[0, 1:]
    nll = -logp.gather(1, tgt[:, None])[:, 0][n_ctx - 1:]
    return float(nll.sum()) / _LN2, int(nll.numel())


def carlini_signals(model, tokenizer, sample: str) -> tuple[float | None, float | None]:
    """(perplexity, zlib ratio) of a sample; None where undefined (empty sample)."""
    bits, n = sample_bits(model, tokenizer, sample)
    if n == 0:
        return None, None
    z = zlib_bits(sample)
    return 2.0 ** (bits / n), (bits / z if z else None)


def _measure(model, tokenizer, canary: Canary, opts: ExposureOptions, exact_rank: bool,
             n_references: int | None = None) -> ExposureResult:
    """The engine's exposure within each measurement's time/FLOP budget (as for known canaries:
    without it, a 5-digit candidate's exact enumeration of 10^5 values ran for minutes, silently,
    on SmolLM2-135M); with ``exact_rank`` False, ``auto`` skips the exact-rank search (costly,
    and the estimate suffices to tell a candidate from chance)."""
    kwargs: dict = {"budget": canary_budget(opts)}
    if not exact_rank and "max_rank" in _ENGINE_PARAMS:
        kwargs["max_rank"] = 0
    return measure_exposure(
        model, tokenizer, canary,
        method=opts.exposure_method, n_references=n_references or opts.n_references,
        exact_limit=opts.exact_limit, seed=opts.seed, batch_size=opts.batch_size,
        confidence=opts.confidence, **kwargs,
    )  # fmt: skip


def judge_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Sequence[Candidate],
    opts: ExposureOptions,
    *,
    threshold: float = 20.0,
    contexts_per_value: int = 1,
    screen_references: int = 0,
    min_repeats: int = 1,
    on_done: Callable[[int, int], None] | None = None,
    rule: MemorizationRule | None = None,
) -> list[Judgement]:
    """Exposure (max over up to ``contexts_per_value`` contexts), extraction and Carlini signals.

    With ``screen_references`` > 0 each value is first measured against that many
    references; only values reaching ``SCREEN_FRACTION`` of the threshold are measured
    again against the full ``opts.n_references`` (the report's ``n_references`` says
    which a value got). Memorized: :func:`scrubber.measure.memorized.decide` with the
    candidates' formats as the tests (``rule``; default: ``strong_bits=threshold``), where
    the value recurs when at least ``min_repeats`` generations held it exactly (random
    samples, or greedy continuations from different prompts, first tokens or anchors), or
    greedy decoding from its prefix reproduces it. Exposure alone overrates sampled values:
    they were drawn from the model, so they are likelier under it than uniform members
    of their format by construction (measured: values sampled once reached 20-43 bits).
    """
    rule = rule or MemorizationRule(strong_bits=threshold)
    tests = effective_tests(c.format for c in candidates)
    out: list[Judgement] = []
    for i, cand in enumerate(candidates):
        best: tuple[ExposureResult, Occurrence] | None = None
        o = opts
        # bits this value needs to count: the false-alarm bound, never above the strong threshold
        need = min(rule.strong_bits, required_bits(tests[cand.format], rule.alpha))
        if opts.exposure_method == "auto" and get_format(cand.format).log2_size < need:
            # can never count as memorized: the estimate from a few references will do
            # (auto would enumerate up to exact_limit members of R for each such value)
            o = opts.model_copy(update={"exposure_method": "extrapolated"})
        for occ in cand.contexts(contexts_per_value):
            canary = Canary(id=f"candidate-{i}", prefix=occ.prefix, secret=cand.value, format=cand.format)
            res = None
            if 0 < screen_references < opts.n_references:
                # most candidates are plainly not memorized: a small reference set says so
                res = _measure(model, tokenizer, canary, o, False, screen_references)
                if res.exposure >= need * SCREEN_FRACTION and o is opts:
                    res = None
            if res is None:
                res = _measure(model, tokenizer, canary, o, exact_rank=False)
            if best is None or res.exposure > best[0].exposure:
                best = (res, occ)
        assert best is not None
        res, occ = best
        extracted = greedy_extracts(model, tokenizer, occ.prefix, cand.value)
        if not extracted and res.exposure >= need:
            # significant but not recited from this context: the value may be recited from
            # another one it followed (a bait can lead to it by sampling, a phrasing greedily)
            for other in cand.contexts(EXTRACT_CONTEXTS)[1:]:
                if other.prefix != occ.prefix and greedy_extracts(model, tokenizer, other.prefix, cand.value):
                    canary = Canary(id=f"candidate-{i}", prefix=other.prefix, secret=cand.value, format=cand.format)
                    res2 = _measure(model, tokenizer, canary, o, exact_rank=False)
                    if res2.exposure >= need:
                        res, occ, extracted = res2, other, True
                        break
        recurs = len(cand.occurrences) >= min_repeats or extracted
        if recurs and res.exposure >= need and opts.exposure_method == "auto" and res.method != "exact":
            # may be memorized: worth an exact rank by search where the engine can get one (a
            # value generated once cannot count, and the search's cost grows with the rank)
            canary = Canary(id=f"candidate-{i}", prefix=occ.prefix, secret=cand.value, format=cand.format)
            res = _measure(model, tokenizer, canary, opts, exact_rank=True)
        ppl, ratio = carlini_signals(model, tokenizer, occ.sample)
        d = decide(res.exposure, tests[cand.format], extracted=extracted, max_exposure=res.max_exposure,
                   selected=True, recurs=recurs, score_bits=res.score_bits, rule=rule)
        out.append(Judgement(cand, occ, res, extracted, ppl, ratio, d.memorized, d))
        if on_done:
            on_done(i + 1, len(candidates))
    return out
