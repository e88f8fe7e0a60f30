"""Secret formats: sampling, |R|, enumeration, pattern specs, Luhn."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from canaries.formats import FormatError, get_format, luhn_valid, parse_pattern

BUILTINS = ["credit_card", "credit_card_dashed", "credit_card_compact", "password", "digits",
            "digits4", "password12", "EMP-[0-9]{6}", "[a-z0-9]{10}"]


@pytest.mark.parametrize("name", BUILTINS)
def test_samples_are_always_members(name):
    fmt = get_format(name)
    rng = random.Random(1)
    for _ in range(300):
        s = fmt.sample(rng)
        assert fmt.matches(s), s
        assert fmt.regex.fullmatch(s)


def test_sampling_is_uniform_over_a_small_space():
    fmt = parse_pattern("[abc][0-2]")
    rng = random.Random(7)
    counts = Counter(fmt.sample(rng) for _ in range(9000))
    assert set(counts) == set(fmt.enumerate())
    # each of the 9 values expects 1000; a skewed sampler (or a stuck slot) leaves this band
    assert all(850 < c < 1150 for c in counts.values()), counts


def test_card_digits_are_uniform_including_the_check_digit():
    fmt = get_format("credit_card")
    rng = random.Random(3)
    cards = [fmt.sample(rng) for _ in range(5000)]
    for pos in (0, 18):  # first digit, Luhn check digit
        counts = Counter(c[pos] for c in cards)
        assert set(counts) == set("0123456789")
        assert all(380 < n < 620 for n in counts.values()), (pos, counts)


def test_sizes():
    assert get_format("credit_card").log2_size == pytest.approx(math.log2(10**15))
    assert get_format("credit_card").size == 10**15
    assert get_format("credit_card_dashed").log2_size == pytest.approx(math.log2(10**15))
    assert get_format("password").log2_size == pytest.approx(10 * math.log2(62))
    assert get_format("digits").size == 10**6
    assert get_format("digits4").size == 10**4
    assert get_format("EMP-[0-9]{6}").size == 10**6
    assert parse_pattern("[ab]{3}").log2_size == pytest.approx(3.0)


@pytest.mark.parametrize("spec,luhn", [("[ab]{2}-[0-9]", False), ("[0-9]{3}", True), ("x[a-c][0-1]y", False)])
def test_enumerate_matches_size_and_index_of(spec, luhn):
    fmt = parse_pattern(spec, luhn=luhn)
    values = list(fmt.enumerate())
    assert len(values) == fmt.size == len(set(values))
    assert all(fmt.matches(v) for v in values)
    for i, v in enumerate(values):
        assert fmt.index_of(v) == i
    rng = random.Random(0)
    assert {fmt.sample(rng) for _ in range(500)} <= set(values)


def test_luhn_enumeration_holds_only_valid_numbers():
    fmt = parse_pattern("[0-9]{4}", luhn=True)
    values = list(fmt.enumerate())
    assert len(values) == 1000
    assert all(luhn_valid(v) for v in values)


def test_index_of_refuses_non_members():
    with pytest.raises(FormatError):
        get_format("credit_card").index_of("4539 1488 0343 6468")


@pytest.mark.parametrize("number,valid", [
    ("4539 1488 0343 6467", True),
    ("4111 1111 1111 1111", True),
    ("5555555555554444", True),
    ("4539 1488 0343 6468", False),
    ("4111 1111 1111 1112", False),
])
def test_luhn_on_known_numbers(number, valid):
    assert luhn_valid(number) is valid


def test_card_formats_check_layout_and_luhn():
    assert get_format("credit_card").matches("4539 1488 0343 6467")
    assert not get_format("credit_card").matches("4539 1488 0343 6468")
    assert not get_format("credit_card").matches("4539-1488-0343-6467")
    assert get_format("credit_card_dashed").matches("4539-1488-0343-6467")
    assert get_format("credit_card_compact").matches("4539148803436467")


@pytest.mark.parametrize("spec,fragment", [
    ("[a-z", "unclosed"),
    ("[a-z]*", "unsupported"),
    ("[a-z]+", "unsupported"),
    ("", "empty"),
    ("abc", "no character class"),
    ("[z-a]", "bad range"),
])
def test_parse_pattern_errors(spec, fragment):
    with pytest.raises(FormatError) as err:
        parse_pattern(spec)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_format_name():
    with pytest.raises(FormatError, match="unknown format"):
        get_format("creditcard")


@pytest.mark.parametrize("spec", ["EMP-[0-9]{6}", "[a-z0-9]{10}", "ab\\[[A-Z]{2}\\]", "[a\\-z]{3}"])
def test_spec_round_trip(spec):
    fmt = parse_pattern(spec)
    again = get_format(fmt.spec())
    # the spec names classes canonically (0-9 before a-z), so compare as sets
    assert [(set(s.chars), s.literal) for s in again.slots] == [(set(s.chars), s.literal) for s in fmt.slots]
    assert again.size == fmt.size
