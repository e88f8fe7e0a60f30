"""Masks: the shape stays readable, the secret never does."""

from __future__ import annotations

import json
import random

import pytest

from canaries.formats import get_format
from canaries.mask import mask_secret, mask_text


def test_card_keeps_last_four_and_separators():
    assert mask_secret("4532 7153 3790 1241", get_format("credit_card")) == "**** **** **** 1241"
    assert mask_secret("4532-7153-3790-1241") == "****-****-****-1241"
    assert mask_secret("4532715337901241") == "************1241"


def test_short_secrets_are_fully_masked():
    assert mask_secret("123456", get_format("digits")) == "******"
    assert mask_secret("1234") == "****"
    assert mask_secret("hunter2") == "*******"


def test_long_secrets_show_at_most_two():
    assert mask_secret("aB3dE6gH9k", get_format("password")) == "********9k"
    assert mask_secret("aB3dE6gH9k") == "********9k"


def test_format_literals_are_kept_and_count_not_towards_length():
    # 6 class characters only: nothing revealed even though the string has 10
    assert mask_secret("EMP-123456", get_format("EMP-[0-9]{6}")) == "EMP-******"
    assert mask_secret("ID-12345678", get_format("ID-[0-9]{8}")) == "ID-******78"


def test_secret_not_of_the_format_falls_back_to_full_masking():
    assert mask_secret("EMP-12345", get_format("EMP-[0-9]{6}")) == "*******45"
    assert mask_secret("") == ""


def test_mask_text_replaces_every_occurrence():
    card, pw = "4532 7153 3790 1241", "aB3dE6gH9k"
    text = f"first {card}, then {pw}; again {card}!"
    out = mask_text(text, [card, pw])
    assert card not in out and pw not in out
    assert out == "first **** **** **** 1241, then ********9k; again **** **** **** 1241!"


def test_mask_text_finds_regrouped_cards():
    card = "4532 7153 3790 1241"
    out = mask_text("a 4532-7153-3790-1241 b 4532715337901241 c", [card])
    assert "7153" not in out and "45327153" not in out
    assert out == "a ****-****-****-1241 b ************1241 c"


def test_mask_text_uses_formats_when_given():
    out = mask_text("user EMP-123456 logged in", [("EMP-123456", get_format("EMP-[0-9]{6}"))])
    assert out == "user EMP-****** logged in"


def test_overlapping_secrets_leave_no_readable_remainder():
    a, b = "abc123xy", "123xyzzz789"
    out = mask_text("<abc123xyzzz789>", [a, b])
    assert a not in out and b not in out
    assert "123" not in out and "zzz" not in out


def test_escaped_spellings_are_masked():
    secret = 'p"w\\d1234'
    text = json.dumps({"secret": secret}) + " " + repr(secret)
    out = mask_text(text, [secret])
    assert json.dumps(secret)[1:-1] not in out and repr(secret)[1:-1] not in out
    assert "1234" not in out


def test_text_without_secrets_is_unchanged():
    assert mask_text("nothing to see", ["4532 7153 3790 1241", ""]) == "nothing to see"
    assert mask_text("nothing", []) == "nothing"


@pytest.mark.parametrize("name", ["credit_card", "password", "digits", "EMP-[0-9]{6}", "[a-z]{12}"])
def test_random_secrets_never_survive(name):
    fmt = get_format(name)
    rng = random.Random(5)
    for _ in range(50):
        s = fmt.sample(rng)
        masked = mask_secret(s, fmt)
        assert len(masked) == len(s) and masked != s
        assert s not in mask_text(f"log: {s}. {s}", [s])
        visible = sum(a == b for a, b, slot in zip(masked, s, fmt.slots) if not slot.literal)
        assert visible <= (4 if fmt.luhn else 2)
