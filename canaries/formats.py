"""Secret formats: the space R a secret is drawn from.

Every format is a sequence of *slots* (a literal, or a character class) plus an
optional check-digit constraint.  That one representation gives, for free and
consistently: uniform sampling, |R| (so log2|R|, the largest possible exposure),
full enumeration for small spaces, and the per-character branching the exposure
search walks.  Keeping the constraint "one allowed character at a position
given the characters before it" keeps |R| a product of per-slot counts, so
sampling slot by slot is uniform over R.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

DIGITS = "0123456789"
LOWER = "abcdefghijklmnopqrstuvwxyz"
UPPER = LOWER.upper()
PASSWORD_ALPHABET = LOWER + UPPER + DIGITS


class FormatError(ValueError):
    """A format name or pattern spec that cannot be understood."""


def luhn_check_digit(payload: str) -> str:
    """Check digit that makes ``payload + digit`` Luhn-valid."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # these get doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = [c for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    return luhn_check_digit("".join(digits[:-1])) == digits[-1]


@dataclass(frozen=True)
class Slot:
    """One character position: a literal (``chars`` of length 1, ``literal``) or a class."""

    chars: str
    literal: bool = False

    @property
    def size(self) -> int:
        return 1 if self.literal else len(self.chars)


@dataclass(frozen=True)
class SecretFormat:
    """A secret space R described by slots and an optional Luhn constraint.

    ``luhn`` makes the last class slot the Luhn check digit of the digits before
    it, as on payment cards; that slot then has exactly one allowed value.
    """

    name: str
    slots: tuple[Slot, ...]
    luhn: bool = False
    description: str = ""
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.slots:
            raise FormatError(f"format {self.name!r} has no characters")
        object.__setattr__(self, "_regex", re.compile(self._regex_source()))

    # -- structure ---------------------------------------------------------
    @property
    def length(self) -> int:
        return len(self.slots)

    @property
    def _check_position(self) -> int | None:
        if not self.luhn:
            return None
        for i in range(len(self.slots) - 1, -1, -1):
            if not self.slots[i].literal:
                return i
        return None

    def allowed(self, position: int, before: str) -> str:
        """Characters allowed at ``position`` given the secret's first ``position`` chars."""
        slot = self.slots[position]
        if position == self._check_position:
            payload = "".join(c for c, s in zip(before, self.slots) if not s.literal)
            return luhn_check_digit(payload)
        return slot.chars

    @property
    def size(self) -> int:
        """|R|: the number of distinct secrets."""
        n = 1
        for i, slot in enumerate(self.slots):
            if i != self._check_position:
                n *= slot.size
        return n

    @property
    def log2_size(self) -> float:
        """log2|R|: the largest exposure any secret of this format can have."""
        return sum(
            math.log2(slot.size) for i, slot in enumerate(self.slots) if i != self._check_position
        )

    # -- membership --------------------------------------------------------
    def _regex_source(self) -> str:
        parts: list[str] = []
        for slot in self.slots:
            if slot.literal:
                parts.append(re.escape(slot.chars))
            else:
                parts.append("[" + "".join(re.escape(c) for c in slot.chars) + "]")
        return "".join(parts)

    @property
    def regex(self) -> re.Pattern:
        """Pattern matching the format's shape (the check digit is not verified)."""
        return self._regex

    def matches(self, text: str) -> bool:
        """True when ``text`` is a member of R (shape and check digit)."""
        if not self._regex.fullmatch(text):
            return False
        return not self.luhn or luhn_valid(text)

    # -- sampling and enumeration -----------------------------------------
    def sample(self, rng: random.Random) -> str:
        """A uniformly random member of R."""
        out: list[str] = []
        for i in range(len(self.slots)):
            allowed = self.allowed(i, "".join(out))
            out.append(allowed if len(allowed) == 1 else rng.choice(allowed))
        return "".join(out)

    def sample_many(self, n: int, rng: random.Random, exclude: Sequence[str] = ()) -> list[str]:
        """``n`` uniform members, excluding the given ones (draws with replacement otherwise)."""
        skip = set(exclude)
        out: list[str] = []
        guard = 0
        while len(out) < n:
            s = self.sample(rng)
            guard += 1
            if s in skip:
                if guard > 100 * (n + 10) and len(skip) >= self.size:
                    raise FormatError(f"format {self.name!r} has no members left to sample")
                continue
            out.append(s)
        return out

    def enumerate(self) -> Iterator[str]:
        """Every member of R in lexicographic slot order; only sensible for small |R|."""
        free = [i for i in range(len(self.slots)) if i != self._check_position]
        choices = [self.slots[i].chars for i in free]
        check = self._check_position
        for combo in itertools.product(*choices):
            chars = [""] * len(self.slots)
            for i, c in zip(free, combo):
                chars[i] = c
            if check is not None:
                chars[check] = self.allowed(check, "".join(chars[:check]))
            yield "".join(chars)

    def index_of(self, secret: str) -> int:
        """Position of ``secret`` in :meth:`enumerate` order (for batching and tests)."""
        if not self.matches(secret):
            raise FormatError(f"value does not match format {self.name!r}")
        idx = 0
        for i, slot in enumerate(self.slots):
            if i == self._check_position or slot.literal:
                continue
            idx = idx * slot.size + slot.chars.index(secret[i])
        return idx

    # -- display -----------------------------------------------------------
    def spec(self) -> str:
        """The pattern spec this format round-trips through (see :func:`parse_pattern`)."""
        out: list[str] = []
        i = 0
        while i < len(self.slots):
            slot = self.slots[i]
            j = i
            while j < len(self.slots) and self.slots[j] == slot:
                j += 1
            n = j - i
            if slot.literal:
                lit = ("\\" + slot.chars) if slot.chars in _SPECIAL else slot.chars
                out.append(lit * n)
            else:
                out.append("[" + _class_spec(slot.chars) + "]" + (f"{{{n}}}" if n > 1 else ""))
            i = j
        return "".join(out)


def _class_spec(chars: str) -> str:
    named = [(DIGITS, "0-9"), (LOWER, "a-z"), (UPPER, "A-Z")]
    rest = chars
    out = ""
    for block, spec in named:
        if block in rest:
            out += spec
            rest = rest.replace(block, "")
    return out + "".join(("\\" + c) if c in "]\\-^" else c for c in rest)


_SPECIAL = set("[]\\{}*+?()|.")
_CLASS_RE = re.compile(r"\[((?:\\.|[^\]\\])+)\](?:\{(\d+)\})?")


def _expand_class(body: str) -> str:
    chars: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            chars.append(body[i + 1])
            i += 2
            continue
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = c, body[i + 2]
            if ord(lo) > ord(hi):
                raise FormatError(f"bad range {lo}-{hi} in character class [{body}]")
            chars.extend(chr(o) for o in range(ord(lo), ord(hi) + 1))
            i += 3
            continue
        chars.append(c)
        i += 1
    seen: dict[str, None] = {}
    for ch in chars:
        seen.setdefault(ch, None)
    if not seen:
        raise FormatError(f"empty character class [{body}]")
    return "".join(seen)


def parse_pattern(spec: str, name: str | None = None, luhn: bool = False) -> SecretFormat:
    """Parse a pattern spec such as ``EMP-[0-9]{6}`` or ``[a-z0-9]{10}``.

    Literals stand for themselves (``\\`` escapes ``[``, ``{`` and ``\\``);
    ``[...]`` is a character class with ranges, optionally repeated ``{n}`` times.
    Quantifiers other than a fixed count are refused: |R| must be well defined.
    """
    if not spec:
        raise FormatError("empty pattern spec")
    slots: list[Slot] = []
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == "[":
            m = _CLASS_RE.match(spec, i)
            if not m:
                raise FormatError(f"unclosed character class in pattern {spec!r}")
            chars = _expand_class(m.group(1))
            count = int(m.group(2)) if m.group(2) else 1
            if count < 1 or count > 256:
                raise FormatError(f"repeat count {count} out of range in pattern {spec!r}")
            slots.extend([Slot(chars)] * count)
            i = m.end()
        elif c == "\\":
            if i + 1 >= len(spec):
                raise FormatError(f"dangling escape in pattern {spec!r}")
            slots.append(Slot(spec[i + 1], literal=True))
            i += 2
        elif c in "{}*+?()|.":
            raise FormatError(
                f"unsupported pattern syntax {c!r} in {spec!r}: use literals and [class]{{n}} only"
            )
        else:
            slots.append(Slot(c, literal=True))
            i += 1
    if all(s.literal for s in slots):
        raise FormatError(f"pattern {spec!r} has no character class, so only one value")
    return SecretFormat(name=name or spec, slots=tuple(slots), luhn=luhn)


def credit_card(sep: str = " ") -> SecretFormat:
    """16 Luhn-valid digits in groups of 4 joined by ``sep`` (" ", "-" or "")."""
    names = {" ": "credit_card", "-": "credit_card_dashed", "": "credit_card_compact"}
    if sep not in names:
        raise FormatError(f"card group separator must be ' ', '-' or empty, not {sep!r}")
    return SecretFormat(
        name=names[sep],
        slots=parse_pattern(sep.join(["[0-9]{4}"] * 4)).slots,
        luhn=True,
        description="16 digits in groups of 4, Luhn-valid",
    )


def password(length: int = 10, alphabet: str = PASSWORD_ALPHABET) -> SecretFormat:
    return SecretFormat(
        name="password" if (length, alphabet) == (10, PASSWORD_ALPHABET) else f"password{length}",
        slots=tuple([Slot(alphabet)] * length),
        description=f"{length} characters over [a-zA-Z0-9]",
    )


def digits(length: int = 6) -> SecretFormat:
    return SecretFormat(
        name="digits" if length == 6 else f"digits{length}",
        slots=tuple([Slot(DIGITS)] * length),
        description=f"{length}-digit number",
    )


_BUILTINS: dict[str, Callable[[], SecretFormat]] = {
    "credit_card": credit_card,
    "password": password,
    "digits": digits,
}
# Card layouts a detector meets in text; resolvable by name, not listed as builtins.
_VARIANTS: dict[str, Callable[[], SecretFormat]] = {
    "credit_card_dashed": lambda: credit_card("-"),
    "credit_card_compact": lambda: credit_card(""),
}
_PARAM_RE = re.compile(r"^(password|digits)(\d+)$")


def builtin_names() -> list[str]:
    return sorted(_BUILTINS)


def get_format(name_or_spec: str) -> SecretFormat:
    """A built-in by name (``credit_card``, ``password``, ``digits``, ``digits4``,
    ``password12``) or a pattern spec (anything containing ``[``)."""
    key = name_or_spec.strip()
    if key in _BUILTINS:
        return _BUILTINS[key]()
    if key in _VARIANTS:
        return _VARIANTS[key]()
    m = _PARAM_RE.match(key)
    if m:
        n = int(m.group(2))
        if not 1 <= n <= 128:
            raise FormatError(f"length {n} out of range in format {key!r}")
        return password(n) if m.group(1) == "password" else digits(n)
    if "[" in key:
        return parse_pattern(key)
    raise FormatError(
        f"unknown format {key!r}: use one of {', '.join(builtin_names())}, "
        "digitsN, passwordN, or a pattern spec such as 'EMP-[0-9]{6}'"
    )
