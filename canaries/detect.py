"""Find candidate secrets in free text (model generations, training records, logs).

Three kinds of detector, most specific first:

* **format**: each format's regex plus its validator (Luhn for cards; a bare
  password must mix upper case, lower case and digits, since any 10-letter word
  has the shape). Cards are 16 digits in 4 groups joined by one separator
  (space, ``-`` or nothing), not glued to other digits or word characters.
* **prose**: ``my password is X``, ``password: X``, ``pwd=X``, ``api_key=X``,
  ``token: X``, ``the PIN is 1234``: the value after a keyword. A value must not
  be a plain word (``the token is NEWLINE``), so it needs a digit, a symbol or
  inner capitals.
* **detect-secrets** (Yelp) key-pattern plugins for API keys and tokens, used
  programmatically. Its high-entropy plugins flag ordinary words in prose, so
  they are off unless asked for, and their hits must then mix letters and
  digits and be 12+ characters long.

Overlapping findings keep the most specific one. Every finding carries a
``format`` that :func:`canaries.formats.get_format` resolves (or None when the
value has no measurable space, e.g. a private-key header), so exposure can be
measured for it, and the ``context_prefix`` that led to it in its sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from canaries.formats import (
    DIGITS,
    LOWER,
    UPPER,
    FormatError,
    SecretFormat,
    Slot,
    get_format,
)
from canaries.mask import mask_secret
from canaries.substitutes import Allowlist

DEFAULT_FORMATS: tuple[str, ...] = ("credit_card", "password")
CONTEXT_CHARS = 200


@dataclass(frozen=True)
class Finding:
    """One candidate secret at ``text[start:end]``; its repr never shows the value."""

    start: int
    end: int
    value: str = field(repr=False)
    format: str | None
    kind: str
    detector: str
    context_prefix: str = field(default="", repr=False)

    @property
    def masked(self) -> str:
        """The value masked; an inferred format's literals are part of the secret, so
        only formats whose literals are public (cards, key prefixes) shape the mask."""
        inferred = self.kind in ("password", "api_key", "high_entropy")
        return mask_secret(self.value, None if inferred else _safe_format(self.format))


def _safe_format(name: str | None) -> SecretFormat | None:
    if name is None:
        return None
    try:
        return get_format(name)
    except FormatError:
        return None


# -- format inference ----------------------------------------------------------------


def infer_format(value: str, literal_prefix: str = "", body_class: str | None = None) -> str | None:
    """A format name or spec that ``value`` is a member of, for exposure measurement.

    Digits only -> ``digitsN``; letters and digits -> ``passwordN``; otherwise
    the alphanumeric positions share one class (the categories present) and
    other characters stay literal, as does ``literal_prefix`` (``AKIA``, ``ghp_``).
    ``body_class`` (a provider's documented alphabet) replaces the guess when the
    value fits it. None when nothing can be drawn (no alphanumerics, too long).
    """
    if not value.startswith(literal_prefix):
        literal_prefix = ""
    body = value[len(literal_prefix):]
    if not body or len(value) > 256:
        return None
    if body_class and all(c in body_class for c in body):
        slots = [Slot(c, literal=True) for c in literal_prefix] + [Slot(body_class)] * len(body)
        spec = SecretFormat(name="inferred", slots=tuple(slots)).spec()
        return spec if get_format(spec).matches(value) else None
    if not literal_prefix:
        for sep in (" ", "-", ""):
            card = get_format({" ": "credit_card", "-": "credit_card_dashed", "": "credit_card_compact"}[sep])
            if card.matches(value):
                return card.name
        if body.isdigit() and body.isascii() and len(body) <= 128:
            return "digits" if len(body) == 6 else f"digits{len(body)}"
        if body.isalnum() and body.isascii() and len(body) <= 128:
            return "password" if len(body) == 10 else f"password{len(body)}"
    cls = "".join(
        block for block, present in (
            (LOWER, any(c in LOWER for c in body)),
            (UPPER, any(c in UPPER for c in body)),
            (DIGITS, any(c in DIGITS for c in body)),
        ) if present
    )
    if not cls:
        return None
    slots = [Slot(c, literal=True) for c in literal_prefix]
    slots += [Slot(cls) if c in cls else Slot(c, literal=True) for c in body]
    try:
        spec = SecretFormat(name="inferred", slots=tuple(slots)).spec()
        fmt = get_format(spec)
    except FormatError:
        return None
    return spec if fmt.matches(value) else None


# -- helpers ---------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?]\s+")


def context_prefix(text: str, start: int) -> str:
    """The text before ``start`` in its line and sentence (at most ``CONTEXT_CHARS``)."""
    line_start = text.rfind("\n", 0, start) + 1
    segment = text[line_start:start]
    ends = list(_SENTENCE_END.finditer(segment))
    if ends and ends[-1].end() < len(segment):
        segment = segment[ends[-1].end():]
    return segment[-CONTEXT_CHARS:]


def _looks_secret(value: str) -> bool:
    """Not a plain word: has a digit, a symbol, or a capital after a lower-case letter."""
    if any(not c.isalpha() for c in value):
        return True
    return any(c.isupper() for c in value[1:]) and any(c.islower() for c in value)


# -- format detectors --------------------------------------------------------------------

_CARD = re.compile(r"(?<!\w)(\d{4})([ -]?)(\d{4})\2(\d{4})\2(\d{4})(?!\w)(?!\2\d)")
_CARD_NAMES = {" ": "credit_card", "-": "credit_card_dashed", "": "credit_card_compact"}


def _card_findings(text: str) -> Iterable[tuple[int, Finding]]:
    for m in _CARD.finditer(text):
        sep = m.group(2)
        if sep and m.start() >= 2 and text[m.start() - 1] == sep and text[m.start() - 2].isdigit():
            continue  # a longer digit group run, not a card
        name = _CARD_NAMES[sep]
        if not get_format(name).matches(m.group(0)):
            continue  # Luhn-invalid
        yield 100, Finding(m.start(), m.end(), m.group(0), name, "credit_card", "format",
                           context_prefix(text, m.start()))


def _bare_password_findings(text: str, fmt: SecretFormat) -> Iterable[tuple[int, Finding]]:
    rx = re.compile(r"(?<![\w\-])" + fmt.regex.pattern + r"(?![\w\-])")
    for m in rx.finditer(text):
        v = m.group(0)
        if any(c.isupper() for c in v) and any(c.islower() for c in v) and any(c.isdigit() for c in v):
            yield 40, Finding(m.start(), m.end(), v, fmt.name, "password", "format",
                              context_prefix(text, m.start()))


def _generic_format_findings(text: str, fmt: SecretFormat, priority: int) -> Iterable[tuple[int, Finding]]:
    before = r"(?<![A-Za-z0-9])" if fmt.slots[0].chars[0].isalnum() else ""
    after = r"(?![A-Za-z0-9])" if fmt.slots[-1].chars[-1].isalnum() else ""
    rx = re.compile(before + fmt.regex.pattern + after)
    kind = "digits" if re.fullmatch(r"digits\d*", fmt.name) else fmt.name
    for m in rx.finditer(text):
        if fmt.matches(m.group(0)):
            yield priority, Finding(m.start(), m.end(), m.group(0), fmt.name, kind, "format",
                                    context_prefix(text, m.start()))


def _format_detector(fmt: SecretFormat):
    """The detector for one format: cards, bare passwords, others by regex."""
    if fmt.luhn and fmt.name in ("credit_card", "credit_card_dashed", "credit_card_compact"):
        return _card_findings
    if fmt.name == "password" or re.fullmatch(r"password\d+", fmt.name):
        return lambda text: _bare_password_findings(text, fmt)
    priority = 30 if fmt.name == "digits" or re.fullmatch(r"digits\d+", fmt.name) else 80
    return lambda text: _generic_format_findings(text, fmt, priority)


# -- prose rules --------------------------------------------------------------------

_PASSWORD_KW = r"password|passwd|pwd|pass\s?phrase|passcode"
_KEY_KW = (
    r"api[ _-]?key|apikey|access[ _-]?key|secret[ _-]?key|client[ _-]?secret|private[ _-]?key"
    r"|auth[ _-]?token|access[ _-]?token|bearer[ _-]?token|token|secret"
)
_PIN_KW = r"pin(?:[ _-]?(?:code|number))?|security[ _-]code|cvv|cvc"
_KW = rf"(?P<kw>{_PASSWORD_KW}|{_KEY_KW}|{_PIN_KW})"
_VALUE = (
    r"(?:\"(?P<dq>[^\"\n]{1,128})\"|'(?P<sq>[^'\n]{1,128})'|`(?P<bq>[^`\n]{1,128})`"
    r"|(?P<bare>[^\s\"'`,;<>()\[\]{}]{1,128}))"
)
_PROSE_RULES = [
    re.compile(  # my (new wifi) password is X
        rf"\b(?:my|our|your|the|his|her|their|its)\s+(?:[a-z]+\s+){{0,2}}?{_KW}"
        rf"\s+(?:is|was)\s*[:=]?\s*{_VALUE}",
        re.IGNORECASE,
    ),
    re.compile(  # password: X, pwd=X, api_key := X
        rf"(?<![A-Za-z0-9]){_KW}\s*(?::=|=>|[:=])\s*{_VALUE}",
        re.IGNORECASE,
    ),
]
_TRAILING = ".,:;!?"


def _kind_of(keyword: str) -> str:
    kw = keyword.lower()
    if re.fullmatch(_PIN_KW, kw):
        return "digits"
    if re.fullmatch(_PASSWORD_KW, kw):
        return "password"
    return "api_key"


def _prose_findings(text: str) -> Iterable[tuple[int, Finding]]:
    for rule in _PROSE_RULES:
        for m in rule.finditer(text):
            group = next(g for g in ("dq", "sq", "bq", "bare") if m.group(g) is not None)
            start, end = m.span(group)
            if group == "bare":
                while end > start and text[end - 1] in _TRAILING:
                    end -= 1
            value = text[start:end]
            kind = _kind_of(m.group("kw"))
            if kind == "digits":
                if not (value.isdigit() and value.isascii() and 4 <= len(value) <= 12):
                    continue
            elif len(value) < (4 if kind == "password" else 6) or not _looks_secret(value):
                continue
            yield 70, Finding(start, end, value, infer_format(value), kind, "prose",
                              context_prefix(text, start))


# -- detect-secrets ------------------------------------------------------------------

# plugins whose patterns are specific to one kind of credential
_DS_SPECIFIC = (
    "AWSKeyDetector", "AzureStorageKeyDetector", "DiscordBotTokenDetector",
    "GitHubTokenDetector", "GitLabTokenDetector", "JwtTokenDetector",
    "MailchimpDetector", "NpmDetector", "OpenAIDetector",
    "PrivateKeyDetector", "PypiTokenDetector", "SendGridDetector",
    "SlackDetector", "SquareOAuthDetector", "StripeDetector",
    "TelegramBotTokenDetector", "TwilioKeyDetector",
)
_DS_GENERIC = ("KeywordDetector", "BasicAuthDetector")
_DS_ENTROPY = ({"name": "Base64HighEntropyString", "limit": 4.5}, {"name": "HexHighEntropyString", "limit": 3.0})
_DS_GENERIC_TYPES = {"Secret Keyword", "Basic Auth Credentials"}
_DS_ENTROPY_TYPES = {"Base64 High Entropy String", "Hex High Entropy String"}
# fixed, public prefixes of key formats: literal in the inferred format
_KNOWN_PREFIX = re.compile(
    r"^(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA|gh[pousr]_|glpat-|[rs]k_live_|xox[abposr]-|SG\.|npm_|pypi-|sk-)"
)
# the character class each provider draws the rest of the key from (its documented shape)
_KEY_BODY_CLASS = {
    "aws_access_key": DIGITS + UPPER,
    "github_token": LOWER + UPPER + DIGITS + "_",
    "stripe_access_key": LOWER + UPPER + DIGITS,
    "npm_tokens": LOWER + UPPER + DIGITS,
}
_EXTEND_LEFT = re.compile(r"[A-Za-z0-9_\-]*$")
_EXTEND_RIGHT = re.compile(r"[A-Za-z0-9_\-+/=.]*")


def _ds_plugins(high_entropy: bool) -> list[dict]:
    plugins = [{"name": n} for n in (*_DS_SPECIFIC, *_DS_GENERIC)]
    if high_entropy:
        plugins += [dict(p) for p in _DS_ENTROPY]
    return plugins


def _slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_")


# A line can only hit an enabled plugin if it holds a long token (every key pattern
# and high-entropy string is 16+ such characters), a keyword of KeywordDetector's
# list, a URL with credentials or a key header; skipping the rest is ~10x faster.
_DS_MAYBE = re.compile(
    r"[A-Za-z0-9_+/=.-]{16}|pass|pwd|secret|key|token|auth|cred|contras|://|BEGIN", re.IGNORECASE
)
_KEY_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{16,}")


def _looks_like_key(value: str) -> bool:
    """A high-entropy hit worth reporting: one 16+ character token mixing letters and
    digits, not a path, URL or version string (those hold '.', '//')."""
    return (
        bool(_KEY_TOKEN.fullmatch(value)) and "//" not in value
        and sum(c.isdigit() for c in value) >= 2 and sum(c.isalpha() for c in value) >= 2
    )


def _ds_findings(text: str, line: str, offset: int) -> Iterable[tuple[int, Finding]]:
    """detect-secrets hits on one line, located and widened to the whole token.

    Some plugins report only a regex group (``ghp`` for a GitHub token), so
    the value is extended over the token characters around it.
    """
    from detect_secrets.core.scan import scan_line

    seen: set[tuple[str, int]] = set()
    for hit in scan_line(line):
        raw = hit.secret_value
        if not raw:
            continue
        for m in re.finditer(re.escape(raw), line):
            s = m.start() - len(_EXTEND_LEFT.search(line, 0, m.start()).group(0))
            e = _EXTEND_RIGHT.match(line, m.end()).end()
            while e > m.end() and line[e - 1] == ".":
                e -= 1
            value = line[s:e]
            if (hit.type, s) in seen:
                continue
            seen.add((hit.type, s))
            if hit.type in _DS_ENTROPY_TYPES:
                if not _looks_like_key(value):
                    continue
                priority, kind = 10, "high_entropy"
            elif hit.type in _DS_GENERIC_TYPES:
                if len(value) < 4 or not _looks_secret(value):
                    continue
                priority = 60
                kind = "password" if hit.type == "Basic Auth Credentials" else "api_key"
            else:
                priority, kind = 90, _slug(hit.type)
            pm = _KNOWN_PREFIX.match(value)
            fmt = None if kind == "private_key" else infer_format(
                value, pm.group(0) if pm else "", _KEY_BODY_CLASS.get(kind)
            )
            yield priority, Finding(offset + s, offset + e, value, fmt, kind,
                                    "detect-secrets", context_prefix(text, offset + s))


# -- the scanner ------------------------------------------------------------------------


def _dedupe(found: list[tuple[int, Finding]]) -> list[Finding]:
    """Keep the most specific (then longest) of overlapping findings."""
    ordered = sorted(found, key=lambda pf: (-pf[0], -(pf[1].end - pf[1].start), pf[1].start))
    kept: list[Finding] = []
    for _, f in ordered:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: (f.start, f.end))


class SecretScanner:
    """Reusable scanner; :meth:`scan_many` configures detect-secrets once for many texts.

    detect-secrets keeps its settings in process-global state: do not scan from
    several threads at once.
    """

    def __init__(
        self,
        formats: Sequence[str | SecretFormat] | None = None,
        allowlist: Allowlist | None = None,
        prose: bool = True,
        detect_secrets: bool = True,
        high_entropy: bool = False,
    ) -> None:
        fmts = [get_format(f) if isinstance(f, str) else f for f in (formats or DEFAULT_FORMATS)]
        detectors = {}
        for fmt in fmts:  # one card detector covers all card layouts
            det = _format_detector(fmt)
            detectors[det if det is _card_findings else fmt.name] = det
        self._format_detectors = list(detectors.values())
        self.allowlist = allowlist
        self.prose = prose
        self.detect_secrets = detect_secrets
        self.high_entropy = high_entropy

    def _scan(self, text: str) -> list[Finding]:
        found: list[tuple[int, Finding]] = []
        for det in self._format_detectors:
            found.extend(det(text))
        if self.prose:
            found.extend(_prose_findings(text))
        if self.detect_secrets:
            offset = 0
            for line in text.splitlines(keepends=True):
                body = line.rstrip("\r\n")
                if _DS_MAYBE.search(body):
                    found.extend(_ds_findings(text, body, offset))
                offset += len(line)
        findings = _dedupe(found)
        if self.allowlist is not None and len(self.allowlist):
            findings = [f for f in findings if f.value not in self.allowlist]
        return findings

    def scan_many(self, texts: Iterable[str]) -> list[list[Finding]]:
        if not self.detect_secrets:
            return [self._scan(t) for t in texts]
        from detect_secrets.settings import transient_settings

        with transient_settings({"plugins_used": _ds_plugins(self.high_entropy)}):
            return [self._scan(t) for t in texts]

    def scan(self, text: str) -> list[Finding]:
        return self.scan_many([text])[0]


def find_secrets(
    text: str,
    formats: Sequence[str | SecretFormat] | None = None,
    allowlist: Allowlist | None = None,
    **options,
) -> list[Finding]:
    """Candidate secrets in ``text``, sorted by position (see :class:`SecretScanner`)."""
    return SecretScanner(formats, allowlist=allowlist, **options).scan(text)
