"""Inject canaries into a training corpus at chosen repetition counts (Secret Sharer protocol).

Each repetition puts one canary document (``prefix + secret``, possibly inside a
carrier sentence) into the corpus, either as a record of its own at a random
position (``insert``) or appended to a random existing record (``append``).
The :class:`Manifest` records where every copy went, so exposure can be related
to the repetition count and the scrub can find every affected record.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Literal, Sequence, TypeVar

from pydantic import BaseModel, Field, ValidationError

from canaries.canary import Canary
from canaries.formats import get_format

Mode = Literal["insert", "append"]
MANIFEST_VERSION = 1

DEFAULT_PREFIXES: dict[str, str] = {
    "credit_card": "My credit card number is ",
    "password": "my password is ",
    "digits": "The PIN is ",
}
FALLBACK_PREFIX = "The secret code is "


class InjectError(ValueError):
    """Bad injection input (missing repetition count, unknown text field, ...)."""


class ManifestError(ValueError):
    """A manifest file that cannot be read."""


class ManifestEntry(BaseModel):
    """Where one canary went: ``indices[j]`` is the record holding its j-th copy."""

    format: str
    repetitions: int = Field(ge=0)
    indices: list[int]
    documents: list[str]


class Manifest(BaseModel):
    """Where each canary was injected; indices refer to the returned corpus."""

    version: int = MANIFEST_VERSION
    mode: Mode
    seed: int | None = None
    text_field: str = "text"
    num_records: int
    canaries: dict[str, ManifestEntry]

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        p = Path(path)
        if not p.is_file():
            raise ManifestError(f"manifest not found: {p}")
        try:
            return cls.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise ManifestError(f"{p}: not valid JSON ({err.msg})") from None
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(x) for x in e["loc"]) or "record"
            raise ManifestError(f"{p}: {loc}: {e['msg']}") from None


# -- making canaries ---------------------------------------------------------------


def default_prefix(format_name: str) -> str:
    """The demo's prefix for a format; ``digits8`` uses the ``digits`` one."""
    base = "credit_card" if format_name.startswith("credit_card") else re.sub(r"\d+$", "", format_name)
    return DEFAULT_PREFIXES.get(format_name, DEFAULT_PREFIXES.get(base, FALLBACK_PREFIX))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "custom"


def make_canaries(
    formats: Sequence[str],
    repetitions: Sequence[int],
    prefixes: dict[str, str] | None = None,
    seed: int = 0,
    carrier: str = "{canary}",
) -> list[Canary]:
    """One canary per (format, repetition count), ids like ``credit_card-r16``.

    Secrets are sampled uniformly from each format (so they are as likely as any
    reference candidate before training) and are all distinct. ``carrier`` wraps
    the canary sentence into the document injected, e.g. ``"Ticket 12: {canary}."``.
    """
    if "{canary}" not in carrier:
        raise InjectError("carrier template must contain '{canary}'")
    if any(r < 0 for r in repetitions):
        raise InjectError("repetition counts must be >= 0")
    rng = random.Random(seed)
    prefixes = prefixes or {}
    out: list[Canary] = []
    used: set[str] = set()
    for name in formats:
        fmt = get_format(name)
        prefix = prefixes.get(name, default_prefix(name))
        for reps in repetitions:
            (secret,) = fmt.sample_many(1, rng, exclude=used)  # distinct across all canaries
            used.add(secret)
            document = carrier.replace("{canary}", prefix + secret)
            cid = f"{_slug(name)}-r{reps}"
            if any(c.id == cid for c in out):
                cid = f"{cid}-{sum(c.id.startswith(cid) for c in out) + 1}"
            out.append(
                Canary(id=cid, prefix=prefix, secret=secret, format=name,
                       documents=[document], repetitions=reps)
            )
    return out


# -- injecting ---------------------------------------------------------------------

Corpus = TypeVar("Corpus")


def _repetitions_for(canaries: Sequence[Canary], repetitions: dict[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in canaries:
        n = (repetitions or {}).get(c.id, c.repetitions)
        if n is None:
            raise InjectError(f"no repetition count for canary {c.id!r}")
        if n < 0:
            raise InjectError(f"negative repetition count for canary {c.id!r}")
        out[c.id] = n
    if len({c.id for c in canaries}) != len(canaries):
        raise InjectError("canary ids must be unique")
    return out


def _copies(canary: Canary, n: int) -> list[str]:
    docs = canary.documents or [canary.text]
    return [docs[j % len(docs)] for j in range(n)]


def _insert(texts: list[str], payload: list[tuple[str, str]], rng: random.Random):
    """New records (``(canary id, document)``) at uniformly random positions.

    Returns ``(order, where)``: ``where[k]`` is the output position of payload ``k``.

    ``order`` lists, per output record, ``("orig", i)`` or ``("new", k)``.
    """
    total = len(texts) + len(payload)
    slots = sorted(rng.sample(range(total), len(payload)))
    new_order = list(range(len(payload)))
    rng.shuffle(new_order)
    order: list[tuple[str, int]] = []
    where: dict[int, int] = {}
    slot_set = dict(zip(slots, new_order))
    orig = 0
    for pos in range(total):
        if pos in slot_set:
            k = slot_set[pos]
            order.append(("new", k))
            where[k] = pos
        else:
            order.append(("orig", orig))
            orig += 1
    return order, where


def _append_targets(n_records: int, n: int, rng: random.Random) -> list[int]:
    """Distinct records when there are enough, so each copy is its own occurrence."""
    if n_records == 0:
        raise InjectError("mode 'append' needs a non-empty corpus")
    if n <= n_records:
        return rng.sample(range(n_records), n)
    return [rng.randrange(n_records) for _ in range(n)]


def inject(
    corpus: Corpus,
    canaries: Sequence[Canary],
    repetitions: dict[str, int] | None = None,
    rng: random.Random | None = None,
    seed: int | None = 0,
    text_field: str = "text",
    mode: Mode = "insert",
    joiner: str = "\n",
) -> tuple[Corpus, Manifest]:
    """Return ``corpus`` (a ``list[str]`` or ``datasets.Dataset``) with the canaries injected.

    Repetition counts come from ``repetitions`` (by canary id) or each canary's
    own ``repetitions``. ``rng`` wins over ``seed``. The input is not modified.
    """
    if mode not in ("insert", "append"):
        raise InjectError(f"unknown injection mode {mode!r}: use 'insert' or 'append'")
    reps = _repetitions_for(canaries, repetitions)
    recorded_seed = seed if rng is None else None
    rng = rng if rng is not None else random.Random(seed)
    is_dataset = hasattr(corpus, "column_names") and hasattr(corpus, "features")
    if not is_dataset and not isinstance(corpus, (list, tuple)):
        raise InjectError(f"corpus must be a list of strings or a datasets.Dataset, not {type(corpus).__name__}")
    if is_dataset:
        if text_field not in corpus.column_names:
            raise InjectError(
                f"dataset has no text field {text_field!r} (columns: {', '.join(corpus.column_names)})"
            )
        texts = list(corpus[text_field])
    else:
        texts = list(corpus)
    if not all(isinstance(t, str) for t in texts):
        raise InjectError("every corpus record must be a string")

    indices: dict[str, list[int]] = {c.id: [] for c in canaries}
    if mode == "insert":
        payload = [(c.id, doc) for c in canaries for doc in _copies(c, reps[c.id])]
        order, where = _insert(texts, payload, rng)
        new_texts = [texts[i] if kind == "orig" else payload[i][1] for kind, i in order]
        for k, (cid, _) in enumerate(payload):
            indices[cid].append(where[k])
    else:
        new_texts = list(texts)
        order = []
        for c in canaries:  # targets drawn per canary: its copies land in distinct records
            for target, doc in zip(_append_targets(len(texts), reps[c.id], rng), _copies(c, reps[c.id])):
                new_texts[target] = new_texts[target] + joiner + doc
                indices[c.id].append(target)

    manifest = Manifest(
        mode=mode,
        seed=recorded_seed,
        text_field=text_field,
        num_records=len(new_texts),
        canaries={
            c.id: ManifestEntry(
                format=c.format, repetitions=reps[c.id], indices=sorted(indices[c.id]),
                documents=list(dict.fromkeys(_copies(c, max(reps[c.id], 1)))),
            )
            for c in canaries
        },
    )
    if not is_dataset:
        return new_texts, manifest
    return _rebuild_dataset(corpus, new_texts, order, text_field, mode), manifest


def _rebuild_dataset(ds, new_texts: list[str], order: list[tuple[str, int]], text_field: str, mode: str):
    """Same columns and features; inserted records get None in the other columns."""
    from datasets import Dataset, concatenate_datasets

    if mode == "append":
        return ds.remove_columns(text_field).add_column(
            text_field, new_texts, feature=ds.features[text_field]
        ).select_columns(ds.column_names)
    n_new = sum(kind == "new" for kind, _ in order)
    if n_new == 0:
        return ds
    new_rows = {col: [None] * n_new for col in ds.column_names}
    new_by_k = {k: pos for pos, (kind, k) in enumerate(order) if kind == "new"}
    new_rows[text_field] = [new_texts[new_by_k[k]] for k in range(n_new)]
    extra = Dataset.from_dict(new_rows, features=ds.features)
    both = concatenate_datasets([ds, extra])
    n = len(ds)
    perm = [i if kind == "orig" else n + i for kind, i in order]
    return both.select(perm)
