"""Benign substitutes z -> z~ of the same format, and the allowlist that remembers them.

A substitute replaces a secret in the training occurrences the scrub updates
against, so it must have the secret's shape (same literals, same character
classes) but must not itself look like a real secret where scanners care: a
card substitute is deliberately Luhn-INVALID, so no card scanner (ours
included) flags it. The allowlist records what we generated, hashed, so a later
scan of the scrubbed model can ignore its own substitutes without the allowlist
file holding any value in the clear.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets as _secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from canaries.formats import SecretFormat, luhn_check_digit

Strategy = Literal["random", "placeholder"]
STRATEGIES: tuple[str, ...] = ("random", "placeholder")
ALLOWLIST_FILE = "scrubber_allowlist.json"
_MAX_TRIES = 1000


class SubstituteError(ValueError):
    """No substitute can be made (bad strategy, secret not of its format, format too small)."""


def _check_secret(secret: str, fmt: SecretFormat) -> None:
    if not fmt.regex.fullmatch(secret):
        raise SubstituteError(f"secret does not have the shape of format {fmt.name!r}")


def _class_positions(fmt: SecretFormat) -> list[int]:
    return [i for i, s in enumerate(fmt.slots) if not s.literal]


def break_luhn(value: str, fmt: SecretFormat, rng: random.Random | None = None) -> str:
    """``value`` with its check digit replaced by a wrong one (random if ``rng``, else the smallest)."""
    check = _class_positions(fmt)[-1]
    payload = "".join(c for c, s in zip(value[:check], fmt.slots) if not s.literal)
    right = luhn_check_digit(payload)
    wrong = [d for d in "0123456789" if d != right]
    digit = rng.choice(wrong) if rng is not None else wrong[0]
    return value[:check] + digit + value[check + 1:]


def random_substitute(secret: str, fmt: SecretFormat, rng: random.Random) -> str:
    """Uniform over the format's shape (Luhn-invalid for Luhn formats), never ``secret``."""
    _check_secret(secret, fmt)
    for _ in range(_MAX_TRIES):
        candidate = fmt.sample(rng)
        if fmt.luhn:
            candidate = break_luhn(candidate, fmt, rng)
        if candidate != secret:
            return candidate
    raise SubstituteError(f"format {fmt.name!r} has no value other than the secret")


def _placeholder_char(chars: str, rank: int) -> str:
    """The ``rank``-th most obviously fake character a class allows."""
    preferred = [c for c in "xX0" if c in chars] + [c for c in chars if c not in "xX0"]
    return preferred[min(rank, len(preferred) - 1)]


def placeholder_substitute(secret: str, fmt: SecretFormat) -> str:
    """A fixed fake value of the shape (``0000 0000 0000 0001``, ``xxxxxxxxxx``), never ``secret``.

    Cards get a wrong check digit (all zeros is Luhn-valid). If the secret is the
    placeholder itself, the next most obvious character is used.
    """
    _check_secret(secret, fmt)
    for rank in range(3):
        chars = [s.chars if s.literal else _placeholder_char(s.chars, rank) for s in fmt.slots]
        value = "".join(chars)
        if fmt.luhn:
            value = break_luhn(value, fmt)
        if value != secret:
            return value
    raise SubstituteError(f"format {fmt.name!r} has no placeholder other than the secret")


def make_substitute(
    secret: str,
    fmt: SecretFormat,
    strategy: str = "random",
    rng: random.Random | None = None,
) -> str:
    """A benign same-shape replacement for ``secret``.

    ``random`` (default) and ``placeholder`` need no model; the model-guided
    strategy lives in :mod:`scrubber.edits.substitutes`.
    """
    if strategy == "random":
        return random_substitute(secret, fmt, rng if rng is not None else random.Random())
    if strategy == "placeholder":
        return placeholder_substitute(secret, fmt)
    if strategy == "model":
        raise SubstituteError(
            "the 'model' strategy needs a model: use scrubber.edits.substitutes.model_guided_substitute"
        )
    raise SubstituteError(f"unknown substitute strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


class AllowlistError(ValueError):
    """An allowlist file that cannot be read."""


class Allowlist(BaseModel):
    """Hashes (salted SHA-256) of the substitutes our scrubs generated, with their format.

    The salt is random per allowlist, so even low-entropy values (a 6-digit
    substitute) cannot be looked up in a precomputed table.
    """

    version: int = 1
    salt: str = Field(default_factory=lambda: _secrets.token_hex(16))
    entries: dict[str, str] = Field(default_factory=dict)  # hash -> format name

    def _hash(self, value: str) -> str:
        return hashlib.sha256((self.salt + "\x00" + value).encode("utf-8")).hexdigest()

    def add(self, value: str, fmt: SecretFormat | str | None = None) -> None:
        name = fmt.name if isinstance(fmt, SecretFormat) else (fmt or "")
        self.entries[self._hash(value)] = name

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self._hash(value) in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def format_of(self, value: str) -> str | None:
        return self.entries.get(self._hash(value))

    def update(self, other: "Allowlist") -> None:
        """Merging needs the values, which we do not keep: refuse different salts."""
        if other.salt != self.salt and other.entries:
            raise AllowlistError("cannot merge allowlists with different salts")
        self.entries.update(other.entries)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / ALLOWLIST_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path, missing_ok: bool = True) -> "Allowlist":
        """The allowlist saved in ``directory``; an empty one if absent and ``missing_ok``."""
        path = Path(directory) / ALLOWLIST_FILE
        if not path.is_file():
            if missing_ok:
                return cls()
            raise AllowlistError(f"allowlist not found: {path}")
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise AllowlistError(f"{path}: not valid JSON ({err.msg})") from None
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(x) for x in e["loc"]) or "record"
            raise AllowlistError(f"{path}: {loc}: {e['msg']}") from None
