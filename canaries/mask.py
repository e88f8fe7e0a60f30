"""Masking: the only form in which a secret may reach a report, log or error.

A mask keeps the shape (length, literal separators) so people can tell which
secret a line is about, and reveals at most a few trailing characters: the last
4 digits of a card (as on receipts), the last 2 characters of a secret with 8 or
more class characters, nothing of a shorter one (a 6-digit PIN has too few
characters to spare any).
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from canaries.formats import SecretFormat

MASK_CHAR = "*"
CARD_VISIBLE = 4
OTHER_VISIBLE = 2
MIN_CLASS_CHARS_TO_REVEAL = 8

_CARD_LIKE = re.compile(r"\d+(?:[ -]\d+)*")


def _looks_like_card(secret: str) -> bool:
    """13-19 digits, optionally grouped by spaces or dashes (Luhn not required:
    a mistyped card is still a card to whoever reads the log)."""
    if not _CARD_LIKE.fullmatch(secret):
        return False
    return 13 <= sum(c.isdigit() for c in secret) <= 19


def _mask_positions(secret: str, keep: list[bool], visible: int) -> str:
    """Mask every position not in ``keep`` except the last ``visible`` maskable ones."""
    maskable = [i for i, k in enumerate(keep) if not k]
    shown = set(maskable[len(maskable) - visible:]) if visible > 0 else set()
    return "".join(c if keep[i] or i in shown else MASK_CHAR for i, c in enumerate(secret))


def mask_secret(secret: str, fmt: SecretFormat | None = None) -> str:
    """The displayable mask of ``secret`` (``**** **** **** 1241`` for a card).

    With ``fmt`` (and a secret of its shape) the format's literals are kept;
    without one, only the separators of a card-like number are kept.
    """
    if not secret:
        return ""
    if fmt is not None and fmt.regex.fullmatch(secret):
        keep = [slot.literal for slot in fmt.slots]
        is_card = fmt.luhn
    elif _looks_like_card(secret):
        keep = [not c.isdigit() for c in secret]
        is_card = True
    else:
        keep = [False] * len(secret)
        is_card = False
    n_class = keep.count(False)
    if is_card:
        visible = CARD_VISIBLE if n_class > 2 * CARD_VISIBLE else 0
    else:
        visible = OTHER_VISIBLE if n_class >= MIN_CLASS_CHARS_TO_REVEAL else 0
    return _mask_positions(secret, keep, visible)


SecretSpec = str | tuple[str, SecretFormat | None]


def _spellings(secret: str) -> list[str]:
    """Forms a secret takes in text: as is, escaped by repr or JSON."""
    out = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    return sorted(out, key=len, reverse=True)


def _card_pattern(secret: str) -> str:
    """A card also leaks regrouped (``4532-7153...``, ``45327153...``): match any grouping."""
    digits = [c for c in secret if c.isdigit()]
    return r"(?<!\d)" + r"[ -]?".join(digits) + r"(?!\d)"


def mask_text(text: str, secrets: Iterable[SecretSpec]) -> str:
    """``text`` with every occurrence of every secret replaced by its mask.

    Items are secrets, or ``(secret, format)`` pairs for format-aware masks.
    Occurrences may overlap (one secret inside or across another): a character
    stays readable only if every mask covering it shows it. Card numbers are also
    found with other digit grouping, and every secret in its repr/JSON escaped form.
    """
    hidden = [False] * len(text)
    for item in secrets:
        secret, fmt = (item, None) if isinstance(item, str) else item
        if not secret:
            continue
        patterns = [(re.escape(secret), True)]
        if (fmt is not None and fmt.luhn) or _looks_like_card(secret):
            patterns.append((_card_pattern(secret), True))
        patterns += [(re.escape(s), False) for s in _spellings(secret) if s != secret]
        for rx, exact in patterns:
            for m in re.finditer(f"(?=({rx}))", text):
                found = m.group(1)
                if exact:
                    use_fmt = fmt if fmt is not None and fmt.regex.fullmatch(found) else None
                    mask = mask_secret(found, use_fmt)
                else:  # an escaped spelling: no partial reveal
                    mask = MASK_CHAR * len(found)
                for j, ch in enumerate(mask):
                    if ch == MASK_CHAR:
                        hidden[m.start(1) + j] = True
    return "".join(MASK_CHAR if h else c for c, h in zip(text, hidden))
