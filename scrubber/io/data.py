"""Reading text data: plain text (documents separated by blank lines), JSON Lines
with a text field, or a saved ``datasets`` directory.

One reader per form, shared by the held-out/retain loaders here and the
training-data loader of ``scrubber.audit``, so every command accepts the same
files and rejects bad ones with the same one-line errors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

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


def _jsonl_record(p: Path, n: int, line: str, text_field: str) -> dict | None:
    """One JSON Lines line: None when blank, else an object with a ``text_field`` string;
    errors name the line."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        raise ScrubberError(f"{p}:{n}: not valid JSON") from None
    if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
        raise ScrubberError(f"{p}:{n}: expected an object with a {text_field!r} string")
    return rec


def read_jsonl_records(p: Path, text_field: str = "text") -> list[dict]:
    """Objects with a ``text_field`` string, one per non-empty line; errors name the line."""
    lines = enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
    return [r for n, line in lines if (r := _jsonl_record(p, n, line, text_field)) is not None]


def read_plain_documents(p: Path) -> list[str]:
    return [t for t in p.read_text(encoding="utf-8").split("\n\n") if t.strip()]


# -- streamed reading, for data too large to hold (``scan --data``) -------------------------

_CHUNK = 1 << 20


def _paragraphs(fh) -> Iterator[str]:
    """``text.split("\\n\\n")`` of a file read in chunks: the same documents as
    :func:`read_plain_documents`, without holding the file."""
    rest = ""
    while chunk := fh.read(_CHUNK):
        parts = (rest + chunk).split("\n\n")
        rest = parts.pop()
        yield from (t for t in parts if t.strip())
    if rest.strip():
        yield rest


def _training_split(path: Path, text_field: str):
    from datasets import DatasetDict

    ds = read_saved_dataset(path)
    if isinstance(ds, DatasetDict):  # (it has column_names too: a dict by split)
        ds = ds[pick_split(ds, ("train",))]  # an audit is about what the model trained on
    if text_field not in ds.column_names:
        raise ScrubberError(f"{path}: dataset has no {text_field!r} column")
    return ds


def check_data_path(path: Path) -> None:
    """A missing --data is refused before anything is read or loaded."""
    if not Path(path).exists():
        raise ScrubberError(f"--data {path}: not found")


def count_documents(path: Path, text_field: str = "text") -> int | None:
    """Rows of a saved dataset (for the progress total); None for files (unknown until read)."""
    return len(_training_split(Path(path), text_field)) if Path(path).is_dir() else None


def iter_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The data's records one at a time, in file order (blank ones skipped); a DatasetDict
    gives its train split."""
    p = Path(path)
    check_data_path(p)
    if p.is_dir():
        ds = _training_split(p, text_field)
        for batch in ds.iter(batch_size=1024):
            yield from (t for t in batch[text_field] if isinstance(t, str) and t.strip())
        return
    try:
        with p.open(encoding="utf-8") as fh:
            if p.suffix in (".jsonl", ".json"):
                for n, line in enumerate(fh, 1):
                    rec = _jsonl_record(p, n, line, text_field)
                    if rec is not None and rec[text_field].strip():
                        yield rec[text_field]
            else:
                yield from _paragraphs(fh)
    except UnicodeDecodeError:
        raise ScrubberError(f"{p}: not UTF-8 text") from None


def load_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Held-out or retain text (a DatasetDict contributes its validation/test split)."""
    p = Path(path)
    if p.is_dir():
        ds = read_saved_dataset(p)
        from datasets import DatasetDict

        if isinstance(ds, DatasetDict):  # it has column_names too, per split
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


# -- data roles ---------------------------------------------------------------
#
# A scrub uses text in three roles, and a number is only honest when no text
# plays two of them: the *retain* term trains the update, the *tune* part picks
# step sizes and stops it (the utility bound, the automatic step), and the
# *evaluation* part is what the report's utility figures are measured on.
# Measured before this split existed: a retain term that trained on the
# held-out text printed held-out perplexity -22.7% after a scrub of a Llama
# checkpoint -- a gain that was only the scrub fitting its own yardstick.

#: Shares of a single file when it must serve every role (by document).
EVAL_SHARE = 0.5
TUNE_SHARE = 0.1


@dataclass(frozen=True)
class RoleSource:
    """Where one role's documents came from, as the report records it."""

    role: str
    path: str
    documents: list[int]
    """0-based indices of the documents (in the file's reading order) that serve this role."""
    n_documents_in_file: int


@dataclass(frozen=True)
class DataRoles:
    retain: list[str]
    tune: list[str]
    evaluation: list[str]
    sources: list[RoleSource] = field(default_factory=list)
    rule: str = ""
    dropped_overlap: int = 0
    """Retain/tune documents dropped because the evaluation part holds the same text."""


def _split_key(text: str, salt: str) -> str:
    """A document's place in a split: a hash of its text, so the split does not depend
    on file order or on which other documents are present."""
    return hashlib.sha256((salt + "\0" + text).encode("utf-8")).hexdigest()


def _hash_order(texts: Sequence[str], salt: str) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: _split_key(texts[i], salt))


def assign_roles(
    eval_texts: Sequence[str] | None,
    eval_path: str | Path | None,
    retain_texts: Sequence[str] | None = None,
    retain_path: str | Path | None = None,
    *,
    salt: str = "scrubber-roles-v1",
) -> DataRoles:
    """Separate retain, tune and evaluation documents by construction.

    * ``--retain-data`` and ``--eval-data``: evaluation is the eval file; the retain
      file is split by document into retain (90%) and tune (10%) parts.
    * ``--eval-data`` only: the file is split by document into evaluation (50%),
      tune (10%) and retain (the rest).
    * ``--retain-data`` only: retain and tune as above; no evaluation part.

    Splits are deterministic (ranked by a salted hash of each document's text), and
    any retain/tune document whose text is also an evaluation document is dropped.
    """
    evaluation: list[str] = []
    sources: list[RoleSource] = []
    retain: list[str] = []
    tune: list[str] = []
    if retain_texts:
        r_texts = list(retain_texts)
        order = _hash_order(r_texts, salt)
        n_tune = max(1, round(TUNE_SHARE * len(r_texts))) if len(r_texts) >= 2 else 0
        tune_idx, retain_idx = sorted(order[:n_tune]), sorted(order[n_tune:])
        if eval_texts:
            evaluation = list(eval_texts)
            sources.append(RoleSource("evaluation", str(eval_path), list(range(len(evaluation))), len(evaluation)))
        rule = "--retain-data split by document hash into {retain} retain and {tune} tune documents" + (
            "; evaluation = --eval-data whole" if eval_texts else "; no evaluation data")
        src_path, n_in_file = str(retain_path), len(r_texts)
    elif eval_texts:
        r_texts = list(eval_texts)
        n = len(r_texts)
        if n < 3:
            raise ScrubberError(
                f"{eval_path}: {n} document(s) cannot be split into retain, tune and evaluation parts; "
                "give at least 3 documents or pass --retain-data"
            )
        order = _hash_order(r_texts, salt)
        n_eval = max(1, round(EVAL_SHARE * n))
        n_tune = max(1, round(TUNE_SHARE * n))
        eval_idx = sorted(order[:n_eval])
        tune_idx = sorted(order[n_eval : n_eval + n_tune])
        retain_idx = sorted(order[n_eval + n_tune :])
        if not retain_idx:
            raise ScrubberError(f"{eval_path}: too few documents to leave any for the retain part; pass --retain-data")
        evaluation = [r_texts[i] for i in eval_idx]
        sources.append(RoleSource("evaluation", str(eval_path), eval_idx, n))
        rule = (f"--eval-data split by document hash (no --retain-data): {len(eval_idx)} evaluation, "
                "{tune} tune and {retain} retain documents")
        src_path, n_in_file = str(eval_path), n
    else:
        return DataRoles([], [], [], [], "no retain or evaluation data")
    held = set(evaluation)
    dropped = sum(1 for i in retain_idx + tune_idx if r_texts[i] in held)
    retain_idx = [i for i in retain_idx if r_texts[i] not in held]
    tune_idx = [i for i in tune_idx if r_texts[i] not in held]
    retain = [r_texts[i] for i in retain_idx]
    tune = [r_texts[i] for i in tune_idx]
    sources.append(RoleSource("retain", src_path, retain_idx, n_in_file))
    sources.append(RoleSource("tune", src_path, tune_idx, n_in_file))
    rule = rule.format(retain=len(retain), tune=len(tune))
    if dropped:
        rule += f"; {dropped} retain/tune document(s) dropped: same text as an evaluation document"
    return DataRoles(retain, tune, evaluation, sources, rule, dropped)
