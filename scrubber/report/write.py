"""Write the report in the requested formats, each file atomically.

CI jobs read these files; a crash half-way must never leave a truncated
``report.json`` that parses as "no canaries". So every format is rendered in memory
first (a rendering error writes nothing), then each file is written to a temporary
file in the same directory and moved into place with :func:`os.replace`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from scrubber.report.html import render_html
from scrubber.report.json_report import render_json
from scrubber.report.markdown import render_markdown
from scrubber.report.sarif import render_sarif
from scrubber.report.schema import Report

RENDERERS: dict[str, Callable[[Report], str]] = {
    "json": render_json,
    "md": render_markdown,
    "html": render_html,
    "sarif": render_sarif,
}
FORMATS = tuple(RENDERERS)


def check_formats(formats: Iterable[str]) -> list[str]:
    """Normalise (lower case, duplicates dropped, order kept) and reject unknown names
    with a one-line :class:`ValueError`, before anything is written."""
    out = list(dict.fromkeys(f.strip().lower() for f in formats))
    bad = [f for f in out if f not in RENDERERS]
    if bad:
        raise ValueError(f"unknown report format {bad[0]!r} (choose from {', '.join(FORMATS)})")
    if not out:
        raise ValueError(f"no report format given (choose from {', '.join(FORMATS)})")
    return out


def report_paths(out_base: Path, formats: Iterable[str]) -> dict[str, Path]:
    """``out_base`` is a path without extension (``out/report`` -> ``out/report.json``),
    or an existing directory (``out/`` -> ``out/report.json``)."""
    base = Path(out_base)
    if base.is_dir():
        base = base / "report"
    return {f: base.with_name(f"{base.name}.{f}") for f in formats}


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(report: Report, out_base: Path, formats: list[str]) -> dict[str, Path]:
    """Render every format, then write them; returns ``{format: path}``."""
    fmts = check_formats(formats)
    texts = {f: RENDERERS[f](report) for f in fmts}
    paths = report_paths(out_base, fmts)
    for f in fmts:
        atomic_write_text(paths[f], texts[f])
    return paths
