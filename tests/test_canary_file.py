"""Canary files: good files load, bad ones fail with one line that names no secret."""

from __future__ import annotations

import json

import pytest

from canaries.canary import Canary, CanaryFileError, dump_canaries, load_canaries

CARD = "4539 1488 0343 6467"
BAD_CARD = "4539 1488 0343 6468"  # Luhn-invalid


def _write(tmp_path, lines: list[str]):
    p = tmp_path / "canaries.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _rec(**kw) -> str:
    base = {"id": "c1", "prefix": "My credit card number is ", "secret": CARD, "format": "credit_card"}
    base.update(kw)
    return json.dumps(base)


def test_good_file_loads(tmp_path):
    p = _write(tmp_path, [
        _rec(documents=["Ticket: My credit card number is " + CARD], repetitions=16),
        "",
        _rec(id="c2", secret="EMP-123456", format="EMP-[0-9]{6}", prefix="id "),
    ])
    cs = load_canaries(p)
    assert [c.id for c in cs] == ["c1", "c2"]
    assert cs[0].repetitions == 16 and cs[0].text == "My credit card number is " + CARD
    assert cs[1].fmt.size == 10**6


def test_dump_load_round_trip(tmp_path):
    cs = [Canary(id="a", prefix="p ", secret="123456", format="digits", repetitions=4)]
    dump_canaries(cs, tmp_path / "c.jsonl")
    assert load_canaries(tmp_path / "c.jsonl") == cs


def _error(tmp_path, lines) -> str:
    with pytest.raises(CanaryFileError) as err:
        load_canaries(_write(tmp_path, lines))
    msg = str(err.value)
    assert "\n" not in msg
    for secret in (CARD, BAD_CARD, "hunter2secret"):
        assert secret not in msg
    return msg


def test_malformed_json(tmp_path):
    assert "not valid JSON" in _error(tmp_path, [_rec(), '{"id": "x", "secret": "' + CARD])


def test_not_an_object(tmp_path):
    assert "JSON object" in _error(tmp_path, [json.dumps([CARD])])


def test_secret_not_matching_format(tmp_path):
    msg = _error(tmp_path, [_rec(secret=BAD_CARD)])
    assert "does not match its format" in msg and ":1:" in msg


def test_unknown_format(tmp_path):
    assert "unknown format" in _error(tmp_path, [_rec(secret="hunter2secret", format="passphrase")])


def test_duplicate_id(tmp_path):
    assert "duplicate canary id" in _error(tmp_path, [_rec(), _rec()])


def test_missing_field_and_extra_field(tmp_path):
    assert "secret" in _error(tmp_path, [json.dumps({"id": "a", "prefix": "p", "format": "digits"})])
    assert "extra" in _error(tmp_path, [_rec(note=CARD)]).lower()


def test_document_without_secret(tmp_path):
    assert "does not contain its secret" in _error(tmp_path, [_rec(documents=["nothing here"])])


def test_empty_file(tmp_path):
    assert "no canaries" in _error(tmp_path, [""])


def test_missing_file(tmp_path):
    with pytest.raises(CanaryFileError, match="not found"):
        load_canaries(tmp_path / "nope.jsonl")
