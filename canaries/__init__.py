"""Secret formats, canaries, injection and detection."""

from canaries.canary import Canary, CanaryFileError, dump_canaries, load_canaries, parse_canary
from canaries.formats import FormatError, SecretFormat, get_format, luhn_valid, parse_pattern

__all__ = [
    "Canary",
    "CanaryFileError",
    "FormatError",
    "SecretFormat",
    "dump_canaries",
    "get_format",
    "load_canaries",
    "luhn_valid",
    "parse_canary",
    "parse_pattern",
]
