"""``python -m scrubber.report [PATH]``: regenerate ``docs/report-schema.json`` (or PATH)."""

from scrubber.report.json_report import main

raise SystemExit(main())
