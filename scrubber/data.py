"""Held-out text for utility numbers: plain text, JSON Lines, or a saved ``datasets`` dir."""

from __future__ import annotations

import json
from pathlib import Path

from scrubber.errors import ScrubberError


def load_texts(path: str | Path, text_field: str = "text") -> list[str]:
    p = Path(path)
    if p.is_dir():
        try:
            from datasets import load_from_disk

            ds = load_from_disk(str(p))
        except Exception as err:
            raise ScrubberError(f"{p}: not a saved datasets directory ({err.__class__.__name__})") from None
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
            split = "validation" if "validation" in ds else "test" if "test" in ds else next(iter(ds))
            ds = ds[split]
        if text_field not in ds.column_names:
            raise ScrubberError(f"{p}: dataset has no {text_field!r} column")
        texts = [t for t in ds[text_field] if isinstance(t, str) and t.strip()]
    elif p.is_file():
        raw = p.read_text(encoding="utf-8", errors="strict")
        if p.suffix in (".jsonl", ".json"):
            texts = []
            for n, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise ScrubberError(f"{p}:{n}: not valid JSON") from None
                if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                    raise ScrubberError(f"{p}:{n}: expected an object with a {text_field!r} string")
                texts.append(rec[text_field])
        else:
            texts = [t for t in raw.split("\n\n") if t.strip()]
    else:
        raise ScrubberError(f"eval data not found: {p}")
    if not texts:
        raise ScrubberError(f"{p}: no text found")
    return texts
