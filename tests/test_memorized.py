"""The memorization rule (scrubber.measure.memorized): small formats count, the false-alarm
bound holds on simulated unseen values, and SARIF/Markdown levels follow the rule."""

from __future__ import annotations

import math
import random

import pytest

from canaries.formats import get_format
from scrubber.measure.memorized import (
    MemorizationRule,
    annotate_canaries,
    decide,
    false_alarm,
    required_bits,
    effective_tests,
)
from scrubber.report import CanaryReport, FindingReport, Measurement, ModelInfo, Report
from scrubber.report.markdown import render_markdown
from scrubber.report.sarif import build_sarif

PIN_MAX = get_format("digits4").log2_size      # 13.29 bits: rank 1 of 10^4
CODE_MAX = get_format("digits").log2_size      # 19.93 bits: rank 1 of 10^6


def test_rank_one_of_a_small_format_is_memorized_when_recited():
    for top in (PIN_MAX, CODE_MAX):
        d = decide(top, tests=2, extracted=True, max_exposure=top)
        assert d.memorized and d.significant and d.false_alarm == pytest.approx(2 * 2 ** -top)
    # the old fixed 20-bit threshold could flag neither
    assert PIN_MAX < 20 and CODE_MAX < 20
    # not recited and under 20 bits: significant, not memorized
    d = decide(CODE_MAX, tests=2, extracted=False, max_exposure=CODE_MAX)
    assert d.significant and not d.memorized and "not extracted" in d.reason
    # 20+ bits count without extraction (extractable by sampling), as before
    assert decide(25.0, tests=2, extracted=False).memorized


def test_the_bound_grows_with_the_tests():
    # a PIN at rank 1 is significant among up to alpha * 10^4 = 100 tests, not among 200
    assert decide(PIN_MAX, tests=100, extracted=True).memorized
    d = decide(PIN_MAX, tests=200, extracted=True)
    assert not d.memorized and not d.significant
    assert d.required_bits == pytest.approx(math.log2(200 / 0.01))
    assert required_bits(1000, 1e-3) == pytest.approx(math.log2(1e6))
    assert false_alarm(0.0, 5) == 1.0


def test_tests_are_split_by_format():
    # G formats, K_f values each: G * K_f; a PIN is not drowned by 300 passwords
    t = effective_tests(["password"] * 300 + ["digits4"] * 2)
    assert t == {"password": 600, "digits4": 4}
    assert decide(PIN_MAX, t["digits4"], extracted=True).memorized


def test_the_false_alarm_rate_holds_for_unseen_values():
    """Simulated scans of never-seen values: rank uniform in R (the null). The share of scans
    calling anything memorized (even with extraction granted) stays at most alpha."""
    rng = random.Random(0)
    formats = {"digits4": 10**4, "digits": 10**6, "password": 2**59}
    alpha = 0.01
    rule = MemorizationRule(alpha=alpha)
    n_scans, alarms = 4000, 0
    for _ in range(n_scans):
        values = [f for f in formats for _ in range(rng.choice((1, 5, 20)))]
        tests = effective_tests(values)
        any_alarm = False
        for f in values:
            size = formats[f]
            rank = 1 + int(rng.random() * size)
            e = math.log2(size) - math.log2(rank)
            any_alarm |= decide(e, tests[f], extracted=True, rule=rule).memorized
        alarms += any_alarm
    # binomial(4000, 0.01): mean 40, sd 6.3; 60 is 3 sd above the bound
    assert alarms <= n_scans * alpha + 20, alarms


def test_discovery_small_formats_need_confidence_and_recurrence():
    ok = dict(extracted=True, max_exposure=CODE_MAX, selected=True, recurs=True)
    assert decide(CODE_MAX, 2, score_bits=1.0, **ok).memorized  # p = 0.5
    d = decide(CODE_MAX, 2, score_bits=8.0, **ok)                 # p = 0.004: a favourite number
    assert not d.memorized and "p=" in d.reason
    assert not decide(CODE_MAX, 2, score_bits=1.0, **{**ok, "recurs": False}).memorized
    # large formats: no confidence condition (a favourite password is no word)
    assert decide(40.0, 2, extracted=False, max_exposure=59.5, selected=True, recurs=True, score_bits=30).memorized


def _m(e: float, extracted: bool) -> Measurement:
    return Measurement(exposure=e, exposure_method="exact", score_bits=1.0, extracted=extracted, rank=1)


def _report(pin_e: float, pin_extracted: bool) -> Report:
    pin = CanaryReport(id="pin", format="digits4", max_exposure=PIN_MAX, secret="****", prefix="my PIN is ",
                       before=_m(pin_e, pin_extracted))
    code = CanaryReport(id="code", format="digits", max_exposure=CODE_MAX, secret="******", prefix="The code is ",
                        before=_m(3.0, False))
    find = FindingReport(id="digits-1", format="digits4", detector="bait:digits", prompt="PIN:", value="****",
                         max_exposure=PIN_MAX, exposure=_m(PIN_MAX, True), memorized=True)
    return Report(command="scan", model=ModelInfo(path="m"), canaries=[pin, code], findings=[find])


def _levels(r: Report) -> dict[str, str]:
    return {res["locations"][0]["logicalLocations"][0]["name"]: res["level"] for res in build_sarif(r)["runs"][0]["results"]}


def test_sarif_and_markdown_follow_the_rule():
    r = _report(PIN_MAX, True)
    # unannotated reports get the rule applied by the writer; annotated ones keep their verdict
    assert _levels(r) == {"pin": "error", "code": "note", "digits-1": "error"}
    annotate_canaries(r)
    assert [c.memorized for c in r.canaries] == [True, False]
    assert _levels(r)["pin"] == "error"
    md = render_markdown(r)
    assert "🔴 pin" in md and "🟢 code" in md
    # the same PIN, not recited: 13.3 bits is a warning (>= 10 bits), not an error
    r2 = _report(PIN_MAX, False)
    annotate_canaries(r2)
    assert r2.canaries[0].memorized is False and _levels(r2)["pin"] == "warning"
