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


#: File extensions that name a report format (``scan.json`` is written as given).
EXTENSIONS = {".json": "json", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
              ".sarif": "sarif"}


def format_of(path: Path) -> str | None:
    """The format a path's extension names (``.sarif.json`` is SARIF), or None for a bare base."""
    name = Path(path).name.lower()
    if name.endswith(".sarif.json"):
        return "sarif"
    return EXTENSIONS.get(Path(path).suffix.lower())


def report_paths(out_base: Path, formats: Iterable[str] | None) -> dict[str, Path]:
    """Where each format goes, the way scanners' users expect (gitleaks ``--report-path``).

    * A path with a known extension (``out/scan.json``) is written as given; with
      ``formats`` None its extension is the format, otherwise the matching format goes
      there and any other format beside it as ``out/scan.<format>``.
    * A bare base (``out/report``) writes ``out/report.<format>`` for each format
      (``formats`` None: json and md).
    * An existing directory is refused: silently writing *inside* it surprised users.
    """
    base = Path(out_base)
    if base.is_dir():
        raise ValueError(f"--report {base}: is a directory; give a file path such as {base / 'report.json'}")
    given = format_of(base)
    fmts = list(formats) if formats is not None else ([given] if given else ["json", "md"])
    if given is None:
        return {f: base.with_name(f"{base.name}.{f}") for f in fmts}
    stem = base.with_name(base.name[: -len(".sarif.json")] if base.name.lower().endswith(".sarif.json")
                          else base.stem)
    return {f: base if f == given or len(fmts) == 1 else stem.with_name(f"{stem.name}.{f}") for f in fmts}


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


def write_reports(report: Report, out_base: Path, formats: list[str] | None) -> dict[str, Path]:
    """Render every format, then write them; returns ``{format: path}``.

    ``formats`` None lets the path's extension decide (see :func:`report_paths`)."""
    paths = report_paths(out_base, check_formats(formats) if formats is not None else None)
    texts = {f: RENDERERS[f](report) for f in paths}
    for f, path in paths.items():
        atomic_write_text(path, texts[f])
    return paths
