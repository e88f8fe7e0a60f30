"""User-facing errors: the CLI prints their one-line message and exits with code 2."""


class ScrubberError(Exception):
    """Bad input or an unusable checkpoint; the message is one line and names no secret."""

    exit_code = 2
