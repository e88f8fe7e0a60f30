"""Detection: cards by Luhn, prose rules, detect-secrets keys, and silence on plain English."""

from __future__ import annotations

import pydoc_data.topics
import pytest

from canaries.detect import SecretScanner, find_secrets, infer_format
from canaries.formats import get_format
from canaries.substitutes import Allowlist

CARD = "4539 1488 0343 6467"


def _values(findings):
    return [f.value for f in findings]


def _check_consistent(text, findings):
    for f in findings:
        assert text[f.start:f.end] == f.value
        assert text[:f.start].endswith(f.context_prefix)
        if f.format is not None:
            assert get_format(f.format).matches(f.value), f


def test_luhn_valid_cards_in_prose():
    text = (f"My credit card number is {CARD}. Backup card: 4539-1488-0343-6467, "
            "and the old one 5555555555554444 expired.")
    found = find_secrets(text)
    _check_consistent(text, found)
    assert _values(found) == [CARD, "4539-1488-0343-6467", "5555555555554444"]
    assert [f.format for f in found] == ["credit_card", "credit_card_dashed", "credit_card_compact"]
    assert {f.detector for f in found} == {"format"} and {f.kind for f in found} == {"credit_card"}
    assert found[0].context_prefix == "My credit card number is "


@pytest.mark.parametrize("text", [
    "Order 4539 1488 0343 6468 shipped.",           # Luhn-invalid
    "Serial 4539148803436468 is bad.",              # bare run, Luhn-invalid
    "Digits 1234 4539 1488 0343 6467 are too many.",  # a longer digit-group run
    "Digits 4539 1488 0343 6467 1234 are too many.",
    "An id x4539148803436467 glued to a letter.",
    "Mixed 4539 1488-0343 6467 separators.",
])
def test_non_cards_are_ignored(text):
    assert [f for f in find_secrets(text) if f.kind == "credit_card"] == []


def test_prose_password_rules():
    text = "Hi! my password is hunter2. Config: pwd=s3cr3t_99; api_key = 'Zx81kQ0pLm'\nPIN: 4821"
    found = find_secrets(text)
    _check_consistent(text, found)
    by_value = {f.value: f for f in found}
    assert set(by_value) == {"hunter2", "s3cr3t_99", "Zx81kQ0pLm", "4821"}
    assert by_value["hunter2"].kind == "password" and by_value["hunter2"].detector == "prose"
    assert by_value["hunter2"].context_prefix == "my password is "
    assert by_value["hunter2"].format == "password7"
    assert by_value["Zx81kQ0pLm"].kind == "api_key"
    assert by_value["4821"].kind == "digits" and by_value["4821"].format == "digits4"


def test_prose_rules_skip_plain_words():
    text = ("The token is NEWLINE. The password is required and the secret is safe. "
            "password: None, token: identifier")
    assert find_secrets(text) == []


def test_aws_key_via_detect_secrets():
    text = "aws_access_key_id = AKIAIOSFODNN7EXAMPLE # from the console"
    (f,) = find_secrets(text)
    assert f.value == "AKIAIOSFODNN7EXAMPLE" and f.detector == "detect-secrets"
    assert f.kind == "aws_access_key" and f.format == "AKIA[0-9A-Z]{16}"
    assert f.context_prefix == "aws_access_key_id = "


def test_token_reported_in_full_and_most_specific_wins():
    token = "ghp_" + "aB3" * 12
    text = f"token: {token}\napi_key=\"sk_live_{'a1B2' * 6}\""
    found = find_secrets(text)
    _check_consistent(text, found)
    assert _values(found) == [token, "sk_live_" + "a1B2" * 6]
    assert [f.kind for f in found] == ["github_token", "stripe_access_key"]


def test_overlaps_keep_the_card():
    text = f"password: {CARD}"
    (f,) = find_secrets(text)
    assert f.value == CARD and f.kind == "credit_card"


def test_bare_password_needs_mixed_classes():
    found = find_secrets("keys aB3dE6gH9k and abcdefghij and ABCDE12345 and Xy7")
    assert _values(found) == ["aB3dE6gH9k"] and found[0].format == "password"


def test_user_format():
    text = "Badge EMP-123456 and EMP-12345 and XEMP-654321"
    found = find_secrets(text, formats=["EMP-[0-9]{6}"], detect_secrets=False)
    assert _values(found) == ["EMP-123456"] and found[0].format == "EMP-[0-9]{6}"


def test_allowlist_drops_our_own_substitutes():
    al = Allowlist()
    al.add("4539 1488 0343 6467", "credit_card")
    text = f"card {CARD} and 5555555555554444"
    assert _values(find_secrets(text, allowlist=al)) == ["5555555555554444"]


def test_findings_do_not_show_values():
    (f,) = find_secrets(f"My credit card number is {CARD}")
    assert CARD not in repr(f) and CARD not in str(f)
    assert f.masked == "**** **** **** 6467"


def test_no_findings_on_ordinary_english():
    """The whole stdlib docs corpus (~65k words of English and code) holds no secret."""
    topics = pydoc_data.topics.topics
    texts = list(topics.values())
    assert sum(len(t) for t in texts) > 100_000
    hits = [f.kind for found in SecretScanner().scan_many(texts) for f in found]
    assert hits == []
    # the high-entropy plugins, when asked for, are filtered down to mixed tokens
    some = [topics[k] for k in ("lambda", "for", "try", "class", "identifiers", "strings")]
    assert SecretScanner(high_entropy=True).scan_many(some) == [[]] * len(some)


def test_scan_many_matches_scan():
    texts = [f"card {CARD}", "nothing", "pwd=Zx81kQ0pLm"]
    scanner = SecretScanner()
    assert scanner.scan_many(texts) == [scanner.scan(t) for t in texts]


@pytest.mark.parametrize("value,expected", [
    (CARD, "credit_card"), ("123456", "digits"), ("1234", "digits4"), ("aB3dE6gH9k", "password"),
    ("s3cr3t_99", "[0-9a-z]{6}_[0-9a-z]{2}"), ("!!!", None),
])
def test_infer_format(value, expected):
    fmt = infer_format(value)
    assert fmt == expected
    if fmt:
        assert get_format(fmt).matches(value)


def test_high_entropy_is_opt_in():
    text = 'blob = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=="'
    assert find_secrets(text) == []
    (f,) = find_secrets(text, high_entropy=True)
    assert f.kind == "high_entropy" and f.value == "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=="
