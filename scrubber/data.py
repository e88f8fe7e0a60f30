"""Reading text data: plain text (documents separated by blank lines), JSON Lines
with a text field, or a saved ``datasets`` directory.

One reader per form, shared by the held-out/retain loaders here and the
training-data loader of ``scrubber.audit``, so every command accepts the same
files and rejects bad ones with the same one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from scrubber.errors import ScrubberError


def read_saved_dataset(p: Path) -> Any:
    """``load_from_disk`` with a one-line error (a Dataset or a DatasetDict)."""
    try:
        from datasets import load_from_disk

        return load_from_disk(str(p))
    except Exception as err:
        raise ScrubberError(f"{p}: not a saved datasets directory ({err.__class__.__name__})") from None


def pick_split(ds: Any, preferred: Sequence[str]) -> str:
    """The first of ``preferred`` present in a DatasetDict, else its first split."""
    return next((s for s in preferred if s in ds), next(iter(ds)))


def read_jsonl_records(p: Path, text_field: str = "text") -> list[dict]:
    """Objects with a ``text_field`` string, one per non-empty line; errors name the line."""
    records = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ScrubberError(f"{p}:{n}: not valid JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
            raise ScrubberError(f"{p}:{n}: expected an object with a {text_field!r} string")
        records.append(rec)
    return records


def read_plain_documents(p: Path) -> list[str]:
    return [t for t in p.read_text(encoding="utf-8").split("\n\n") if t.strip()]


def load_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Held-out or retain text (a DatasetDict contributes its validation/test split)."""
    p = Path(path)
    if p.is_dir():
        ds = read_saved_dataset(p)
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
            ds = ds[pick_split(ds, ("validation", "test"))]
        if text_field not in ds.column_names:
            raise ScrubberError(f"{p}: dataset has no {text_field!r} column")
        texts = [t for t in ds[text_field] if isinstance(t, str) and t.strip()]
    elif p.is_file():
        if p.suffix in (".jsonl", ".json"):
            texts = [r[text_field] for r in read_jsonl_records(p, text_field)]
        else:
            texts = read_plain_documents(p)
    else:
        raise ScrubberError(f"eval data not found: {p}")
    if not texts:
        raise ScrubberError(f"{p}: no text found")
    return texts
