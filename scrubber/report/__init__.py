"""The exposure report: one pydantic model (``schema``) and a writer per format."""

from scrubber.report.gate import compute_gate
from scrubber.report.json_report import load_report, report_json_schema
from scrubber.report.schema import (
    SCHEMA_VERSION,
    CanaryReport,
    FindingReport,
    Gate,
    Measurement,
    ModelInfo,
    Report,
    ScrubInfo,
    TokenizerBaseline,
    TokenizerFinding,
    TokenizerPiece,
    TokenizerSection,
    ToolInfo,
    Utility,
)
from scrubber.report.write import FORMATS, write_reports

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "CanaryReport",
    "FindingReport",
    "Gate",
    "Measurement",
    "ModelInfo",
    "Report",
    "ScrubInfo",
    "TokenizerBaseline",
    "TokenizerFinding",
    "TokenizerPiece",
    "TokenizerSection",
    "ToolInfo",
    "Utility",
    "compute_gate",
    "load_report",
    "report_json_schema",
    "write_reports",
]
