"""The canary record that flows through the pipeline, and its JSON Lines file."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from canaries.formats import FormatError, SecretFormat, get_format


class CanaryFileError(ValueError):
    """A canary file that cannot be read; the message is one line and names no secret."""


class Canary(BaseModel):
    """``prefix + secret``; ``documents`` are the training texts that contain it, if known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    prefix: str
    secret: str = Field(min_length=1)
    format: str = Field(min_length=1)
    documents: list[str] | None = None
    repetitions: int | None = Field(default=None, ge=0)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        get_format(v)  # raises FormatError (a ValueError) with a clear message
        return v

    @cached_property
    def fmt(self) -> SecretFormat:
        return get_format(self.format)

    @property
    def text(self) -> str:
        return self.prefix + self.secret


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "record"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}"


def parse_canary(record: dict, where: str = "canary") -> Canary:
    try:
        canary = Canary.model_validate(record)
    except ValidationError as err:
        raise CanaryFileError(f"{where}: {_first_error(err)}") from None
    except FormatError as err:
        raise CanaryFileError(f"{where}: {err}") from None
    if not canary.fmt.matches(canary.secret):
        raise CanaryFileError(
            f"{where}: secret of canary {canary.id!r} does not match its format {canary.format!r}"
        )
    if canary.documents is not None:
        for doc in canary.documents:
            if canary.secret not in doc:
                raise CanaryFileError(
                    f"{where}: a document of canary {canary.id!r} does not contain its secret"
                )
    return canary


def load_canaries(path: str | Path) -> list[Canary]:
    """Read and validate a canary file; raises :class:`CanaryFileError` on the first problem."""
    p = Path(path)
    if not p.is_file():
        raise CanaryFileError(f"canary file not found: {p}")
    out: list[Canary] = []
    seen: set[str] = set()
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CanaryFileError(f"{p}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise CanaryFileError(f"{p}:{n}: each line must be a JSON object")
            canary = parse_canary(record, where=f"{p}:{n}")
            if canary.id in seen:
                raise CanaryFileError(f"{p}:{n}: duplicate canary id {canary.id!r}")
            seen.add(canary.id)
            out.append(canary)
    if not out:
        raise CanaryFileError(f"{p}: no canaries in file")
    return out


def dump_canaries(canaries: Iterable[Canary], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for c in canaries:
            fh.write(json.dumps(c.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
