"""``report.json`` and its JSON Schema.

The JSON is pydantic's serialization of :class:`Report`, so field order (with
``schema_version`` first) and names follow the models and stay stable. The schema is
generated from the same models; ``docs/report-schema.json`` is a checked-in copy that
a test keeps in sync (regenerate with ``python -m scrubber.report``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from scrubber.report.schema import SCHEMA_VERSION, Report

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DOCS_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "report-schema.json"


def render_json(report: Report) -> str:
    """Indented JSON, newline-terminated; in-memory-only fields (reference scores) left out."""
    return report.model_dump_json(indent=2) + "\n"


def load_report(path: str | Path) -> Report:
    """Read a ``report.json`` back (e.g. to re-render it in another format)."""
    return Report.model_validate_json(Path(path).read_text(encoding="utf-8"))


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``report.json``, as it is serialized."""
    schema = Report.model_json_schema(mode="serialization")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:scrubber:report-schema:{SCHEMA_VERSION}",
        "description": (
            "Exposure report written by scrubber (report.json). Secrets are masked unless 'revealed' is true."
        ),
        **schema,
    }


def render_json_schema() -> str:
    return json.dumps(report_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema to ``docs/report-schema.json`` (or the path given)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DOCS_SCHEMA_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_json_schema(), encoding="utf-8")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
