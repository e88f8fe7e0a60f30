"""--report PATH conventions, and a gate that counts bits and tokenizer findings apart."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import write_card_canary
from scrubber.cli import app
from scrubber.report import CanaryReport, Measurement, ModelInfo, Report, compute_gate
from scrubber.report.gate import gate_messages
from scrubber.report.schema import TokenizerFinding, TokenizerSection
from scrubber.report.write import report_paths


def test_report_path_with_extension_is_written_as_given(tmp_path):
    assert report_paths(tmp_path / "scan.json", None) == {"json": tmp_path / "scan.json"}
    assert report_paths(tmp_path / "scan.sarif.json", None) == {"sarif": tmp_path / "scan.sarif.json"}
    assert report_paths(tmp_path / "scan.json", ["json", "html"]) == {
        "json": tmp_path / "scan.json", "html": tmp_path / "scan.html"}
    assert report_paths(tmp_path / "scan", None) == {"json": tmp_path / "scan.json", "md": tmp_path / "scan.md"}
    assert report_paths(tmp_path / "scan", ["sarif"]) == {"sarif": tmp_path / "scan.sarif"}


def test_report_path_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        report_paths(tmp_path, None)


def test_cli_scan_writes_the_report_path_as_given(card_model, tmp_path):
    model_dir, _ = card_model
    canaries = write_card_canary(tmp_path / "c.jsonl")
    target = tmp_path / "out" / "scan.json"
    r = CliRunner().invoke(app, ["scan", str(model_dir), "--canaries", str(canaries), "--n-references", "50",
                                 "--no-tokenizer-scan", "--report", str(target), "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in target.parent.iterdir()) == ["scan.json"]
    rep = json.loads(target.read_text())
    assert rep["tokenizer"] is None  # --no-tokenizer-scan on scan


def test_cli_report_into_a_directory_is_one_line_exit_2(card_model, tmp_path):
    model_dir, _ = card_model
    canaries = write_card_canary(tmp_path / "c.jsonl")
    r = CliRunner().invoke(app, ["scan", str(model_dir), "--canaries", str(canaries), "--n-references", "50",
                                 "--report", str(tmp_path), "-q"])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "is a directory" in r.stderr


def _report(exposure: float, flagged: bool) -> Report:
    m = Measurement(exposure=exposure, exposure_method="extrapolated", score_bits=1.0, extracted=False)
    c = CanaryReport(id="card", format="credit_card", max_exposure=49.8, secret="****", prefix="p", before=m)
    tok = TokenizerSection(findings=[TokenizerFinding(id="tokenizer:card", flagged=flagged)])
    return Report(command="scan", model=ModelInfo(path="m"), canaries=[c], tokenizer=tok)


def test_gate_bits_only():
    g = compute_gate(_report(30.0, flagged=False), 20)
    assert g.failed and g.bits_offenders == ["card"] and not g.tokenizer_offenders
    (line,) = gate_messages(g)
    assert line.startswith("gate: 1 item above 20 bits: card")


def test_gate_tokenizer_only_never_claims_bits():
    g = compute_gate(_report(5.0, flagged=True), 1000)
    assert g.failed and not g.bits_offenders and g.tokenizer_offenders == ["tokenizer:card"]
    (line,) = gate_messages(g)
    assert "above" not in line and "1 tokenizer finding" in line
    off = compute_gate(_report(5.0, flagged=True), 1000, fail_on_tokenizer=False)
    assert not off.failed and gate_messages(off) == []


def test_gate_both_kinds_get_a_line_each():
    g = compute_gate(_report(30.0, flagged=True), 20)
    lines = gate_messages(g)
    assert len(lines) == 2 and "above 20 bits" in lines[0] and "tokenizer finding" in lines[1]
    assert g.offenders == ["card", "tokenizer:card"]


def test_version_flag():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("scrubber ")


def test_public_test_values_are_labelled_and_do_not_gate_as_findings():
    from canaries.public_values import public_test_value
    from scrubber.report.schema import FindingReport

    assert public_test_value("4111 1111 1111 1111") == "Visa test card"
    assert public_test_value("4111-1111-1111-1111") == "Visa test card"
    assert public_test_value("4539 1488 0343 6467") is None
    m = Measurement(exposure=45.0, exposure_method="extrapolated", score_bits=1.0, extracted=True)
    known = FindingReport(id="card-1", format="credit_card", detector="format:credit_card", prompt="card:",
                          value="****", exposure=m, memorized=False, public_test_value="Visa test card")
    leaked = known.model_copy(update={"id": "card-2", "public_test_value": None, "memorized": True})
    rep = Report(command="scan", model=ModelInfo(path="m"), findings=[known, leaked])
    g = compute_gate(rep, 20)
    assert g.bits_offenders == ["card-2"]
