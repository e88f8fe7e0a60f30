"""A real SARIF consumer reads our SARIF: sarif-tools (PyPI), as a CI pipeline would run it.

Our own structure test (test_report.py) checks the fields we meant to write; this checks
that an independent client finds the results, with their rule ids and levels, and that
its `--check error` gate agrees with ours.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from conftest import console_script
from scrubber.report.sarif import build_sarif
from test_report import build_report

pytest.importorskip("sarif", reason="sarif-tools is a test dependency (pip install -e '.[test]')")


def _sarif_cli() -> list[str]:
    exe = console_script("sarif")
    assert exe, "the sarif-tools console script is missing"
    return [exe]


def _write(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "report.sarif"
    path.write_text(json.dumps(build_sarif(build_report(**kw))), encoding="utf-8")
    return path


def _records(tmp_path: Path, sarif_path: Path) -> list[dict[str, str]]:
    out = tmp_path / "results.csv"
    proc = subprocess.run(_sarif_cli() + ["csv", "--output", str(out), str(sarif_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with out.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_sarif_tools_lists_every_result_with_rule_and_level(tmp_path):
    rows = _records(tmp_path, _write(tmp_path))
    got = sorted((r["Code"], r["Severity"]) for r in rows)
    # two canaries, one discovery finding, one tokenizer finding (test_report.build_report)
    assert len(rows) == 4
    assert ("scrubber/tokenizer-leak", "note") in got
    assert ("scrubber/credit_card", "error") in got  # the discovery finding at 25 bits
    assert ("scrubber/credit_card", "note") in got  # card-16, scrubbed to 1.2 bits
    assert sum(1 for code, sev in got if code.startswith("scrubber/pattern-") and sev == "error") == 1
    for r in rows:
        assert r["Tool"] == "scrubber" and r["Description"]
        assert "4532 7153 3790 1241" not in r["Description"]  # masked for the client too


def test_sarif_tools_check_gate_follows_our_levels(tmp_path):
    gated = subprocess.run(_sarif_cli() + ["--check", "error", "summary", str(_write(tmp_path))],
                           capture_output=True, text=True, timeout=120)
    assert gated.returncode != 0  # results at error level: a client gate fails the build
    clean = tmp_path / "clean"
    clean.mkdir()
    rep = build_report(fail_above=None)
    rep.findings = []
    rep.canaries = [c for c in rep.canaries if c.current().exposure < 5]
    path = clean / "report.sarif"
    path.write_text(json.dumps(build_sarif(rep)), encoding="utf-8")
    ok = subprocess.run(_sarif_cli() + ["--check", "error", "summary", str(path)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
