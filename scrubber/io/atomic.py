"""Outputs appear whole or not at all: build in a sibling temp dir, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from scrubber.errors import ScrubberError


def check_output_dir(out: Path, *, inputs: tuple[Path, ...] = (), force: bool = False) -> None:
    """Refuse outputs that would clobber a user's data or write into an input checkpoint."""
    out = out.resolve()
    for src in inputs:
        src = src.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise ScrubberError(f"output {out} overlaps the input {src}; choose another --out")
    if out.exists() and not out.is_dir():
        raise ScrubberError(f"output {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise ScrubberError(f"output directory {out} is not empty; pass --force to replace it")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``out``; on success it replaces ``out`` in one rename.

    On any exception the temp dir is removed and ``out`` is left as it was.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
