"""Injection: exact repetition counts, a manifest that points at the right records."""

from __future__ import annotations

import random

import datasets
import pytest

from canaries.formats import get_format
from canaries.inject import InjectError, Manifest, ManifestError, inject, make_canaries

CORPUS = [f"Record number {i} about nothing in particular." for i in range(40)]


@pytest.fixture(scope="module")
def canaries():
    return make_canaries(["credit_card", "password", "digits"], [1, 4, 16], seed=3)


def _occurrences(texts, secret):
    return sum(t.count(secret) for t in texts)


def test_make_canaries(canaries):
    assert len(canaries) == 9
    assert len({c.id for c in canaries}) == 9 and len({c.secret for c in canaries}) == 9
    assert {c.id for c in canaries} >= {"credit_card-r16", "password-r1", "digits-r4"}
    for c in canaries:
        assert c.fmt.matches(c.secret)
        assert c.documents == [c.prefix + c.secret]
    by_id = {c.id: c for c in canaries}
    assert by_id["credit_card-r16"].prefix == "My credit card number is "
    assert by_id["password-r4"].prefix == "my password is "
    assert by_id["digits-r1"].prefix == "The PIN is " and by_id["digits-r1"].repetitions == 1
    assert make_canaries(["digits"], [1, 4], seed=3) == make_canaries(["digits"], [1, 4], seed=3)


def test_make_canaries_carrier_and_custom_prefix():
    (c,) = make_canaries(["EMP-[0-9]{6}"], [2], prefixes={"EMP-[0-9]{6}": "Badge "},
                         carrier="Note: {canary}. End.")
    assert c.id == "emp_0_9_6-r2" and c.prefix == "Badge "
    assert c.documents == [f"Note: Badge {c.secret}. End."]
    with pytest.raises(InjectError):
        make_canaries(["digits"], [1], carrier="no slot")


@pytest.mark.parametrize("mode", ["insert", "append"])
def test_list_counts_and_manifest(canaries, mode):
    new, manifest = inject(CORPUS, canaries, seed=0, mode=mode)
    total = sum(c.repetitions for c in canaries)
    assert len(new) == (len(CORPUS) + total if mode == "insert" else len(CORPUS))
    assert manifest.num_records == len(new) and manifest.mode == mode
    for c in canaries:
        entry = manifest.canaries[c.id]
        assert _occurrences(new, c.secret) == c.repetitions == entry.repetitions
        assert len(entry.indices) == c.repetitions
        assert all(c.secret in new[i] for i in entry.indices)
        assert entry.documents == c.documents
    # the original records keep their relative order and content
    if mode == "insert":
        assert [t for t in new if t in CORPUS] == CORPUS
    else:
        assert all(t.startswith(o) for t, o in zip(new, CORPUS))


def test_insert_positions_are_spread(canaries):
    new, manifest = inject(CORPUS, canaries, seed=0)
    idx = manifest.canaries["credit_card-r16"].indices
    assert idx[0] < len(new) // 2 < idx[-1]


def test_repetitions_override_and_zero(canaries):
    reps = {c.id: 0 for c in canaries} | {"digits-r1": 5}
    new, manifest = inject(CORPUS, canaries, repetitions=reps, seed=0)
    digits = next(c for c in canaries if c.id == "digits-r1")
    assert _occurrences(new, digits.secret) == 5 and len(new) == len(CORPUS) + 5
    assert manifest.canaries["password-r16"].indices == []


def test_deterministic_under_seed(canaries):
    a = inject(CORPUS, canaries, seed=11)
    b = inject(CORPUS, canaries, seed=11)
    c = inject(CORPUS, canaries, seed=12)
    assert a == b and a[0] != c[0]
    d = inject(CORPUS, canaries, rng=random.Random(11))
    assert d[0] == a[0] and d[1].seed is None


def test_input_is_not_modified(canaries):
    corpus = list(CORPUS)
    inject(corpus, canaries, seed=0, mode="append")
    assert corpus == CORPUS


@pytest.mark.parametrize("mode", ["insert", "append"])
def test_dataset(canaries, mode):
    ds = datasets.Dataset.from_dict({"body": CORPUS, "label": list(range(len(CORPUS)))})
    new, manifest = inject(ds, canaries, seed=0, text_field="body", mode=mode)
    as_list, list_manifest = inject(CORPUS, canaries, seed=0, mode=mode)
    assert isinstance(new, datasets.Dataset)
    assert new.column_names == ["body", "label"] and new.features == ds.features
    assert new["body"] == as_list
    assert manifest.canaries == list_manifest.canaries and manifest.text_field == "body"
    for c in canaries:
        for i in manifest.canaries[c.id].indices:
            row = new[i]
            assert c.secret in row["body"]
            if mode == "insert":
                assert row["label"] is None
    assert sorted(x for x in new["label"] if x is not None) == list(range(len(CORPUS)))


def test_manifest_round_trip(tmp_path, canaries):
    _, manifest = inject(CORPUS, canaries, seed=0)
    path = manifest.save(tmp_path / "sub" / "manifest.json")
    assert Manifest.load(path) == manifest
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(path)
    path.write_text('{"mode": "sideways"}')
    with pytest.raises(ManifestError):
        Manifest.load(path)
    with pytest.raises(ManifestError, match="not found"):
        Manifest.load(tmp_path / "missing.json")


def test_bad_input(canaries):
    bare = [c.model_copy(update={"repetitions": None}) for c in canaries[:1]]
    with pytest.raises(InjectError, match="no repetition count"):
        inject(CORPUS, bare)
    with pytest.raises(InjectError, match="text field"):
        inject(datasets.Dataset.from_dict({"t": ["a"]}), canaries)
    with pytest.raises(InjectError, match="non-empty"):
        inject([], canaries, mode="append")
    with pytest.raises(InjectError, match="mode"):
        inject(CORPUS, canaries, mode="prepend")
    with pytest.raises(InjectError, match="unique"):
        inject(CORPUS, [canaries[0], canaries[0]])
    assert get_format("credit_card").matches(canaries[0].secret)
