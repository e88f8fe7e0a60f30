"""Data roles: retain, tune and evaluation documents never overlap, and the split is stable."""

from __future__ import annotations

import pytest

from scrubber.io.data import assign_roles
from scrubber.errors import ScrubberError

DOCS = [f"document number {i} about topic {i % 7}" for i in range(40)]


def test_eval_only_is_split_disjointly_by_document():
    roles = assign_roles(DOCS, "held.txt")
    parts = [set(roles.retain), set(roles.tune), set(roles.evaluation)]
    assert all(parts)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(map(len, parts)) == len(DOCS)
    assert len(roles.evaluation) == 20 and len(roles.tune) == 4
    by_role = {s.role: s for s in roles.sources}
    assert sorted(by_role["evaluation"].documents + by_role["tune"].documents + by_role["retain"].documents) \
        == list(range(len(DOCS)))
    assert [DOCS[i] for i in by_role["evaluation"].documents] == roles.evaluation
    assert "split by document" in roles.rule


def test_split_does_not_depend_on_file_order():
    a = assign_roles(DOCS, "held.txt")
    b = assign_roles(list(reversed(DOCS)), "held.txt")
    assert set(a.evaluation) == set(b.evaluation) and set(a.retain) == set(b.retain)


def test_retain_file_splits_into_retain_and_tune_and_drops_eval_copies():
    retain = [f"retain doc {i}" for i in range(20)] + [DOCS[0]]
    roles = assign_roles(DOCS[:5], "held.txt", retain, "retain.txt")
    assert roles.evaluation == DOCS[:5]
    assert DOCS[0] not in roles.retain and DOCS[0] not in roles.tune
    assert roles.dropped_overlap == 1
    assert not set(roles.retain) & set(roles.tune)
    assert len(roles.retain) + len(roles.tune) == 20 and len(roles.tune) == 2


def test_too_few_documents_is_a_clear_error():
    with pytest.raises(ScrubberError, match="--retain-data"):
        assign_roles(DOCS[:2], "held.txt")


def test_a_saved_dataset_dict_gives_its_validation_split(tmp_path):
    """A DatasetDict has column_names too (per split): it must still be read by split."""
    from datasets import Dataset, DatasetDict

    from scrubber.io.data import load_texts

    DatasetDict({
        "train": Dataset.from_dict({"text": ["train doc one", "train doc two"]}),
        "validation": Dataset.from_dict({"text": ["held-out doc", "  "]}),
    }).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds") == ["held-out doc"]
