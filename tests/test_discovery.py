"""Discovery: baits, candidate extraction (fixed generations), judging on a tiny trained model."""

from __future__ import annotations

import random

import pytest
import torch

from canaries.substitutes import Allowlist
from scrubber.discovery.baits import DEFAULT_BAITS, UNCONDITIONAL, Bait, parse_bait, resolve_baits
from scrubber.discovery.candidates import extract_candidates, is_variant, merge_variants
from scrubber.discovery.config import DiscoverScanConfig
from scrubber.discovery.sampling import Generation, SamplingSettings, sample_generations
from scrubber.errors import ScrubberError

from discovery_helpers import PREFIX, SECRET, UNSEEN, tiny_secret_model


CARD = "4539 1488 0343 6467"      # Luhn-valid
BAD_CARD = "4539 1488 0343 6468"  # Luhn-invalid


def gen(bait_text: str | None, continuation: str, kind: str = "any") -> Generation:
    bait = Bait(bait_text, kind) if bait_text is not None else None
    prompt = bait.text if bait else ""
    return Generation(bait, prompt + continuation, len(prompt))


# -- baits ----------------------------------------------------------------------------


def test_default_baits_cover_each_kind_and_have_no_trailing_space():
    kinds = {b.kind for b in DEFAULT_BAITS}
    assert {"credit_card", "password", "api_key", "digits"} <= kinds
    assert all(b.text == b.text.rstrip() and b.text for b in DEFAULT_BAITS)
    assert "my password is" in [b.text for b in DEFAULT_BAITS]


def test_yaml_baits_extend_or_replace_defaults():
    extra = ["Customer card on file: ", {"text": "wifi password:", "kind": "password"}]
    both = resolve_baits(extra)
    assert len(both) == len(DEFAULT_BAITS) + 2
    assert both[-2] == Bait("Customer card on file:", "any")
    assert resolve_baits(extra, use_defaults=False)[1].kind == "password"
    with pytest.raises(ValueError, match="kind"):
        parse_bait({"text": "x", "kind": "ssn"})
    with pytest.raises(ValueError):
        DiscoverScanConfig(baits=[{"prompt": "x"}])
    with pytest.raises(ValueError):
        DiscoverScanConfig(temperature=0)


# -- candidates -----------------------------------------------------------------------


def test_cards_passwords_and_bait_anchored_codes_are_found():
    gens = [
        gen("My credit card number is", f" {CARD}. Thanks", "credit_card"),
        gen("card:", f" {BAD_CARD}", "credit_card"),                 # Luhn-invalid: no card
        gen("The door code is", " 48213377.", "digits"),              # no generic rule knows door codes
        gen("The door code is", " open", "digits"),                  # not digits: nothing
        gen(None, f"Hello. {PREFIX}{SECRET} and more"),               # prose rule, unconditional
    ]
    stats: dict = {}
    cands = extract_candidates(gens, stats=stats)
    by_value = {c.value: c for c in cands}
    assert set(by_value) == {CARD, "48213377", SECRET}
    assert by_value[CARD].format == "credit_card" and by_value[CARD].detector == "format:credit_card"
    assert by_value["48213377"].format == "digits8" and by_value["48213377"].detector == "bait:digits"
    assert by_value[SECRET].format == "password" and by_value[SECRET].kind == "password"
    occ = by_value[SECRET].occurrences[0]
    assert occ.prefix == f"Hello. {PREFIX}" and occ.prompt == UNCONDITIONAL and not occ.from_bait
    assert by_value[CARD].occurrences[0].prefix == "My credit card number is "


def test_dedupe_counts_and_first_occurrence_gives_context():
    gens = [gen("my password is", f" {SECRET}", "password") for _ in range(3)]
    gens.append(gen(None, f"password: {SECRET} again password: {SECRET}"))
    gens.append(gen("The code is", f" {SECRET}"))
    (cand,) = extract_candidates(gens)
    assert cand.count == 5
    # the later copy inside one sample is not a second occurrence
    assert [o.prefix for o in cand.occurrences].count("password: ") == 1
    # contexts: from baits first, most frequent prefix first, distinct prefixes
    assert [o.prefix for o in cand.contexts(3)] == ["my password is ", "The code is ", "password: "]


def test_values_inside_the_prompt_are_not_findings():
    g = Generation(Bait(f"password: {SECRET} is what"), f"password: {SECRET} is what I said", 25)
    assert extract_candidates([g]) == []


def test_allowlisted_values_are_dropped():
    allow = Allowlist()
    allow.add(SECRET, "password")
    gens = [gen("my password is", f" {SECRET}", "password"), gen("card:", f" {CARD}", "credit_card")]
    stats: dict = {}
    cands = extract_candidates(gens, allowlist=allow, stats=stats)
    assert [c.value for c in cands] == [CARD]
    assert stats["allowlisted"] == 1


def test_allowlist_is_read_from_the_model_dir(tmp_path):
    from scrubber.discovery.scan import load_allowlist

    allow = Allowlist()
    allow.add(SECRET, "password")
    allow.save(tmp_path)
    assert SECRET in load_allowlist(tmp_path)
    assert len(load_allowlist(tmp_path / "nowhere")) == 0
    (tmp_path / "scrubber_allowlist.json").write_text("{not json")
    with pytest.raises(ScrubberError):
        load_allowlist(tmp_path)


def test_near_copies_merge_into_the_most_frequent_value():
    assert is_variant(SECRET, "Xq77Lm2Pz9K")
    assert is_variant(SECRET, "Xq7Lm2Pz9Katt")
    assert not is_variant(SECRET, UNSEEN)
    rng = random.Random(0)
    # independent random 8-digit codes and cards almost never look like variants
    codes = ["".join(rng.choice("0123456789") for _ in range(8)) for _ in range(200)]
    pairs = sum(is_variant(a, b) for i, a in enumerate(codes) for b in codes[i + 1:])
    assert pairs <= 2
    gens = [gen("my password is", f" {SECRET}", "password")] * 3 + [
        gen("my password is", " Xq77Lm2Pz9K", "password"),
        gen("my password is", f" {UNSEEN}", "password"),
    ]
    cands = extract_candidates(gens)
    assert [c.value for c in cands] == [SECRET, UNSEEN]
    assert cands[0].count == 4 and cands[0].variants == 1 and cands[0].sampled == 3
    assert len(merge_variants(extract_candidates(gens, merge=False))) == 2


# -- sampling and judging on a tiny trained model -------------------------------------


@pytest.fixture(scope="module")
def loaded():
    from scrubber.io.checkpoint import load_model

    return load_model(tiny_secret_model())


def test_sampling_is_seeded_and_restores_rng(loaded):
    baits = [Bait("my password is", "password")]
    s = SamplingSettings(samples_per_bait=3, unconditional_samples=2, max_new_tokens=8,
                         unconditional_tokens=8, seed=7)
    torch.manual_seed(123)
    a = sample_generations(loaded.model, loaded.tokenizer, baits, s)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = sample_generations(loaded.model, loaded.tokenizer, baits, s)
    assert [g.text for g in a] == [g.text for g in b]
    assert torch.equal(after, torch.rand(1))  # the caller's RNG stream is untouched
    assert len(a) == 8 + 3 + 2 and a[0].greedy and a[-1].bait is None  # top-8 greedy branches, samples
    assert all(g.text.startswith("my password is") for g in a[:11])
    assert len({g.text for g in a[:8]}) > 1  # the branches differ


def test_judge_separates_the_memorized_secret_from_an_unseen_one(loaded):
    from scrubber.config import ExposureOptions
    from scrubber.discovery.judge import judge_candidates

    gens = [gen("my password is", f" {SECRET}", "password"), gen("my password is", f" {UNSEEN}", "password")]
    cands = extract_candidates(gens, merge=False)
    opts = ExposureOptions(n_references=200, exposure_method="extrapolated")
    judged = {j.candidate.value: j for j in judge_candidates(loaded.model, loaded.tokenizer, cands, opts)}
    mem, other = judged[SECRET], judged[UNSEEN]
    assert mem.memorized and mem.exposure >= 20 and mem.extracted
    assert not other.memorized and other.exposure < 20 and not other.extracted
    # Carlini et al.'s secondary signals: the memorized sample is easier for the model
    assert mem.perplexity < other.perplexity and mem.zlib_ratio < other.zlib_ratio
    assert SECRET not in mem.masked_value()


def test_discover_ranks_the_memorized_secret_first_and_masks_it(loaded):
    from scrubber.discovery.scan import run_discovery

    cfg = DiscoverScanConfig(
        default_baits=False, baits=[{"text": "my password is", "kind": "password"}, "The code is"],
        samples_per_bait=6, unconditional_samples=4, unconditional_tokens=48, max_new_tokens=16,
        n_references=200, exposure_method="extrapolated",
    )
    res = run_discovery(loaded, cfg)
    top = res.findings[0]
    assert top.memorized and top.format == "password" and top.value == "********9K"
    assert res.judgements[0].candidate.value == SECRET
    assert [f.exposure.exposure for f in res.findings] == sorted(
        (f.exposure.exposure for f in res.findings), reverse=True)
    (emitted,) = [c for c in res.memorized_canaries() if c.secret == SECRET]
    assert emitted.prefix in ("my password is ", "The code is ") and emitted.format == "password"


def test_keyword_hits_must_look_generated():
    from scrubber.discovery.candidates import looks_random

    for v in ("pslm0lcNQq", "JLsCfMZyuK", "9f8a7b6c5d4e", "17953304", SECRET):
        assert looks_random(v), v
    for v in ("SyntaxError", "object.__enter__", "expression_string", "str.300", "ORFappingy", "**PEP"):
        assert not looks_random(v), v
    gens = [gen("password:", " SyntaxError", "password"), gen("token:", " object.__enter__", "api_key")]
    stats: dict = {}
    assert extract_candidates(gens, stats=stats) == [] and stats["not_random"] == 2


def test_patterned_values_are_no_secrets_whatever_rule_found_them():
    """What SmolLM2-135M recited with nothing inserted (a 31-digit 10^30 after ``token:``, a
    repeated unit after ``API_KEY =``) is dropped from every keyword rule, as anchored digit runs
    were; random values of the same shapes, and small formats such as a PIN, are kept."""
    import random
    import string

    from scrubber.discovery.candidates import patterned

    for v in ("1000000000000000000000000000000", "2wYwYwYwYw", "123456789", "987654", "4311111111",
              "121212", "1111", "0x10000000"):
        assert patterned(v), v
    for v in ("17953304", "pslm0lcNQq", "2020", "5673", "0xD9C8EBA6", SECRET, "4539 1488 0343 6467"):
        assert not patterned(v), v
    rng = random.Random(0)
    for n, alphabet, at_most in ((16, string.digits, 1e-3), (10, string.ascii_letters + string.digits, 1e-3),
                                 (6, string.digits, 0.01), (4, string.digits, 0.005)):
        dropped = sum(patterned("".join(rng.choice(alphabet) for _ in range(n))) for _ in range(20_000))
        assert dropped / 20_000 <= at_most, (n, dropped)
    gens = [gen("token:", " 1000000000000000000000000000000", "api_key"),
            gen("API_KEY =", " 2wYwYwYwYw", "api_key"), gen("my PIN is", " 5673", "digits"),
            Generation(None, "the config had 2wYwYwYwYw in it", 0)]  # found by the bare-password format detector
    stats: dict = {}
    (kept,) = extract_candidates(gens, stats=stats)
    assert kept.value == "5673" and stats["patterned"] == 3


# -- anchored branches ----------------------------------------------------------------


def anchored(window: str, continuation: str) -> Generation:
    return Generation(None, window + continuation, len(window), greedy=True, anchor=True)


def test_anchored_branches_read_the_value_the_model_was_writing():
    gens = [
        anchored("ticket resolved, ref", " 583917. Then"),          # a bare 6-digit number
        anchored("archived value:", " 583917"),                       # recurs from a second anchor
        anchored("vault entry hT", "4mQ9vZ2x. more"),                 # anchor inside the value
        anchored("released in", " 2019 and"),                          # short digit runs: years, counts
        anchored("flags", " 4311111111"),                              # patterned: what models fall into
        anchored("see also", " configuration files"),                 # words: nothing
    ]
    stats: dict = {}
    by_value = {c.value: c for c in extract_candidates(gens, stats=stats)}
    assert set(by_value) == {"583917", "hT4mQ9vZ2x"}
    code = by_value["583917"]
    assert code.count == 2 and code.detector == "anchor:digits" and code.format == "digits"
    assert code.occurrences[0].prompt == "<anchor>" and code.occurrences[0].anchored
    pw = by_value["hT4mQ9vZ2x"]
    assert pw.format == "password" and pw.occurrences[0].prefix == "vault entry "


def test_secret_start_tokens(tiny_tokenizer):
    from scrubber.discovery.anchors import secret_start_tokens

    tok = tiny_tokenizer
    mask = secret_start_tokens(tok)
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    digits = [i for i, t in enumerate(texts) if t.strip() and t.strip()[0].isdigit()]
    words = [i for i, t in enumerate(texts) if t.strip().isalpha()]
    assert digits and all(mask[i] for i in digits)
    assert words and not any(mask[i] for i in words)
    seeded = secret_start_tokens(tok, seeds=[words[0]])
    assert seeded[words[0]] and int(seeded.sum()) == int(mask.sum()) + 1


def test_judging_a_candidate_keeps_to_the_exposure_time_budget(loaded):
    """A small-format candidate under ``auto`` would be enumerated exactly (10^5 values for a
    5-digit code: minutes on a 135M model, with no progress); the per-measurement budget of
    known canaries applies here too, so the engine falls back and says why."""
    from scrubber.config import ExposureOptions
    from scrubber.discovery.judge import judge_candidates

    cands = extract_candidates([gen("The door code is", " 48213", "digits")], merge=False)
    assert cands and cands[0].value == "48213"
    cands[0].format = "digits5"
    opts = ExposureOptions(n_references=200, exposure_method="auto", exposure_seconds=0.05, exact_limit=10**5)
    (j,) = judge_candidates(loaded.model, loaded.tokenizer, cands, opts)
    assert j.result.method != "exact"
    assert j.result.fallback_reason
