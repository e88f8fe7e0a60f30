"""Issue 12's acceptance for discovery without bait phrasings (item 1) and small formats (item 4).

Item 1: a card, a 6-digit code and a 10-character password, each seen 32 times after phrasings
drawn from a large generated list that shares no word with any bait (tests/phrasing_models.py).
With the baits switched off entirely, discovery must report at least 2 of 3 memorized and
nothing memorized on the clean twin. Budget: 60 s per scan on the shared 2-core machine, one
thread (measured 10-25 s CPU). The fast variant (secrets ~10% of the text) also checks that
the anchored search reaches the bare 6-digit code no detector reports; the slow one (~5%)
is where the anchored search makes the difference: unconditional sampling alone (64 or 256
samples) reports 1 of 3 there, with the anchored search 2 of 3.

Item 4: a model that recites a 4-digit PIN and a 6-digit code it saw 32 times has both
reported memorized, by discovery and as known canaries (13.3 and 19.9 bits: under the old
fixed 20-bit threshold); its twin, neither.
"""

from __future__ import annotations

import time

import pytest

from canaries.canary import Canary
from scrubber.discovery.baits import DEFAULT_BAITS
from scrubber.discovery.config import DiscoverScanConfig
from scrubber.discovery.scan import run_discovery, scan_report
from scrubber.io.checkpoint import load_model

import phrasing_models as pm

SCAN_BUDGET_S = 60.0
#: The fast scan: no baits at all (nothing can lean on a phrasing), 64 unconditional samples,
#: the default format-anchored search over them.
NO_BAITS = dict(default_baits=False, unconditional_samples=64, n_references=300)


@pytest.fixture(scope="module")
def phrasing():
    """The fast variant (insertions ~10% of the text): seconds to build."""
    return load_model(pm.phrasing_model(True, **pm.EASY)), load_model(pm.phrasing_model(False, **pm.EASY))


@pytest.fixture(scope="module")
def phrasing_hard():
    """Insertions ~5% of the text, as in a real fine-tune: unconditional samples alone find 1 of 3."""
    return load_model(pm.phrasing_model(True)), load_model(pm.phrasing_model(False))


def _memorized(res) -> dict[str, object]:
    return {j.candidate.value: f for f, j in zip(res.findings, res.judgements) if f.memorized}


def test_phrasings_share_no_word_with_any_bait():
    bait_words = set().union(*(pm._words(b.text) for b in DEFAULT_BAITS))
    pool = pm.phrasings()
    assert len(pool) >= 200 and len(set(pool)) == len(pool)
    assert not bait_words & set().union(*(pm._words(p) for p in pool))


def test_discovery_without_baits_finds_secrets_after_unknown_phrasings(phrasing):
    model, _twin = phrasing
    t0 = time.perf_counter()
    res = run_discovery(model, DiscoverScanConfig(**NO_BAITS))
    seconds = time.perf_counter() - t0
    found = _memorized(res)
    hits = {fmt for fmt, v in pm.PHRASING_SECRETS.items() if v in found}
    assert len(hits) >= 2, (hits, [(j.candidate.format, j.exposure, j.decision) for j in res.judgements])
    assert all(v not in f.value for v, f in found.items())  # masked
    # only the anchored search reaches a bare 6-digit number: a candidate at rank 1 of 10^6
    (code,) = [(f, j) for f, j in zip(res.findings, res.judgements) if j.candidate.value == pm.CODE6]
    assert code[0].detector == "anchor:digits" and code[0].prompt == "<anchor>"
    assert code[0].exposure.exposure > 19.0
    assert seconds < SCAN_BUDGET_S * 2, seconds  # the budget, with slack for a loaded machine
    assert res.stats["anchors"] > 0


def test_discovery_without_baits_reports_nothing_memorized_on_the_clean_twin(phrasing):
    _model, twin = phrasing
    res = run_discovery(twin, DiscoverScanConfig(**NO_BAITS))
    assert not _memorized(res), [(f.format, f.exposure.exposure) for f in res.findings if f.memorized]


@pytest.mark.slow
@pytest.mark.parametrize("settings", [NO_BAITS, {}], ids=["no-baits", "defaults"])
def test_discovery_finds_two_of_three_in_the_harder_model_and_nothing_on_its_twin(phrasing_hard, settings):
    """~40 s to train each model; a scan takes 10-40 s CPU (no baits) or 1-3 min (defaults)."""
    model, twin = phrasing_hard
    res = run_discovery(model, DiscoverScanConfig(**settings))
    found = _memorized(res)
    hits = {fmt for fmt, v in pm.PHRASING_SECRETS.items() if v in found}
    assert len(hits) >= 2, (hits, [(j.candidate.format, j.exposure, j.decision) for j in res.judgements])
    assert not _memorized(run_discovery(twin, DiscoverScanConfig(**settings)))


# -- item 4: small formats ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    return pm.small_format_model(True), pm.small_format_model(False)


def _canaries() -> list[Canary]:
    return [
        Canary(id="pin", prefix=pm.PIN_PREFIX + " ", secret=pm.PIN, format="digits4", repetitions=32),
        Canary(id="code", prefix=pm.CODE_PREFIX + " ", secret=pm.CODE6, format="digits", repetitions=32),
    ]


def test_known_small_format_canaries_are_memorized_only_where_recited(small):
    model_dir, twin_dir = small
    cfg = DiscoverScanConfig(n_references=300, tokenizer_scan=False)
    rep, _ = scan_report(model_dir, cfg, canaries=_canaries())
    by_id = {c.id: c for c in rep.canaries}
    assert by_id["pin"].memorized and by_id["code"].memorized
    assert by_id["pin"].before.exposure == pytest.approx(13.29, abs=0.01)  # rank 1 of 10^4
    assert by_id["code"].before.exposure > 19.0 and by_id["code"].before.exposure < 20.0
    rep_twin, _ = scan_report(twin_dir, cfg, canaries=_canaries())
    assert [c.memorized for c in rep_twin.canaries] == [False, False]
    assert all(c.before.exposure < 12 for c in rep_twin.canaries)


def test_discovery_reports_a_recited_pin_and_code_and_nothing_on_the_twin(small):
    model_dir, twin_dir = small
    digit_baits = [{"text": b.text, "kind": b.kind} for b in DEFAULT_BAITS if b.kind == "digits"]
    cfg = DiscoverScanConfig(default_baits=False, baits=digit_baits, samples_per_bait=8,
                             unconditional_samples=32, n_references=300)
    found = _memorized(run_discovery(load_model(model_dir), cfg))
    assert {pm.PIN, pm.CODE6} <= set(found)
    assert found[pm.PIN].format == "digits4" and found[pm.PIN].exposure.exposure < 20
    assert not _memorized(run_discovery(load_model(twin_dir), cfg))
