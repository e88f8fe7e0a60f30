"""Report schema and writers: contract keys, formats, masking, SARIF shape, HTML render in a browser."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from scrubber.report import (
    CanaryReport,
    FindingReport,
    Measurement,
    ModelInfo,
    Report,
    ScrubInfo,
    TokenizerFinding,
    TokenizerSection,
    Utility,
    compute_gate,
    load_report,
    report_json_schema,
    write_reports,
)
from scrubber.measure.memorized import level
from scrubber.report.json_report import DOCS_SCHEMA_PATH, render_json_schema
from scrubber.report.markdown import md_escape, render_markdown
from scrubber.report.sarif import SARIF_SCHEMA, build_sarif
from scrubber.report.write import report_paths

from browser import chromium_or_skip, load_page
from test_cli_scrub import SECRET, _canary_file, trained_dir  # noqa: F401  (trained_dir is a fixture)

RAW_CARD = "4532 7153 3790 1241"
RAW_PASSWORD = "hX7|qZ2*pL"
RAW_FOUND = "5105 1051 0510 5100"
RAW_SUBSTITUTE = "4000 1234 5678 9010"
RAW_VALUES = [RAW_CARD, RAW_PASSWORD, RAW_FOUND, RAW_SUBSTITUTE, "7153 3790", "1051 0510"]
ALL_FORMATS = ["json", "md", "html", "sarif"]


def _mask(s: str) -> str:
    """Stand-in for the upstream masking: keep the last 4 characters of cards only."""
    return re.sub(r"\d", "*", s[:-4]) + s[-4:] if s[0].isdigit() else "*" * len(s)


def _refs(center: float, n: int = 300, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(center, 8.0) for _ in range(n)]


def _measurement(exposure: float, score: float, extracted: bool, method="extrapolated", refs=None) -> Measurement:
    return Measurement(
        exposure=exposure, exposure_method=method, ci_low=exposure - 1.5, ci_high=exposure + 1.5,
        rank=1.0, score_bits=score, n_references=300, capped=False, extracted=extracted,
        reference_percentiles={"p1": 38.0, "p50": 60.0}, reference_scores=refs,
    )


def build_report(revealed: bool = False, fail_above: float | None = 10.0, plots: bool = True) -> Report:
    """Two canaries (one scrubbed), a finding and a tokenizer entry; ``plots=False``
    drops the reference scores so HTML renders without matplotlib (fast)."""
    show = (lambda s: s) if revealed else _mask
    refs = _refs if plots else (lambda *args, **kw: None)
    card = CanaryReport(
        id="card-16", format="credit_card", repetitions=16, max_exposure=49.8, secret=show(RAW_CARD),
        prefix="My credit card number is ",
        before=_measurement(33.1, 4.2, True, refs=refs(60)),
        after=_measurement(1.2, 58.0, False, method="interpolated", refs=refs(61, seed=1)),
        substitute=show(RAW_SUBSTITUTE),
    )
    pw = CanaryReport(
        id="pw-4", format="[a-zA-Z0-9|*]{10}", repetitions=None, max_exposure=59.5, secret=show(RAW_PASSWORD),
        prefix="password: ", before=_measurement(12.5, 40.0, False, method="search", refs=refs(70, seed=2)),
    )
    finding = FindingReport(
        id="finding-1", format="credit_card", detector="format:credit_card", prompt="card number:",
        value=show(RAW_FOUND), max_exposure=49.8, exposure=_measurement(25.0, 9.0, True, refs=refs(55, seed=3)),
        zlib_ratio=0.8, perplexity=3.4, memorized=True,
    )
    report = Report(
        created=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc), command="scrub",
        model=ModelInfo(path="runs/demo/model", architecture="GPT2LMHeadModel", n_parameters=1_000_000),
        revealed=revealed, canaries=[card, pw], findings=[finding],
        tokenizer=TokenizerSection(findings=[TokenizerFinding(id="card-16", format="credit_card",
                                                              value="**** ****", token_ids=[301, 302],
                                                              flagged=False, evidence="2 of 4 groups")],
                                   advice=["Retrain the tokenizer on the cleaned corpus."]),
        utility=Utility(perplexity_before=23.41, perplexity_after=23.97, perplexity_change_pct=2.39, eval_tokens=12345),
        scrub=ScrubInfo(method="first-order", seconds=1.3, params_selected="transformer.h.*.mlp.*",
                        n_parameters_updated=131072, tau=5e-4, damping=None, substitute_strategy="random",
                        gradient_residual=0.021, extra={"loss_span": "secret"}),
    )
    if fail_above is not None:
        report.gate = compute_gate(report, fail_above)
    return report


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """All four formats of one report, written once (plots take about a second)."""
    return write_reports(build_report(), tmp_path_factory.mktemp("reports") / "out" / "report", ALL_FORMATS)


def test_writes_every_format(written):
    assert {f: p.name for f, p in written.items()} == {
        "json": "report.json", "md": "report.md", "html": "report.html", "sarif": "report.sarif"}
    out = written["json"].parent
    assert out.name == "out" and all(p.parent == out for p in written.values())
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_json_contract_keys(written):
    data = json.loads(written["json"].read_text())
    assert next(iter(data)) == "schema_version" and data["schema_version"] == "1.0"
    assert data["tool"]["name"] == "scrubber" and data["command"] == "scrub"
    card, pw = data["canaries"]
    for key in ("id", "format", "repetitions", "max_exposure"):
        assert key in card and key in pw
    for key in ("exposure", "exposure_method", "extracted"):
        assert key in card["before"]
    assert card["after"]["exposure"] == 1.2 and card["after"]["extracted"] is False
    assert pw["repetitions"] is None and pw["after"] is None
    assert data["utility"]["perplexity_before"] == 23.41 and data["utility"]["perplexity_after"] == 23.97
    assert data["scrub"]["method"] == "first-order" and data["scrub"]["seconds"] == 1.3
    assert "reference_scores" not in card["before"], "plot-only field must stay out of the JSON"
    assert data["created"].startswith("2025-01-02T03:04:05")
    assert {k: data["gate"][k] for k in ("fail_above", "failed", "offenders", "bits_offenders")} == {
        "fail_above": 10.0, "failed": True, "offenders": ["pw-4", "finding-1"], "bits_offenders": ["pw-4", "finding-1"]}
    back = load_report(written["json"])
    assert back.canaries[0].after.exposure == 1.2 and back.canaries[0].before.reference_scores is None


def test_schema_rejects_nan_and_unknown_keys_without_echoing_input():
    with pytest.raises(ValueError) as err:
        Measurement(exposure=float("nan"), exposure_method="exact", score_bits=1.0, extracted=False)
    with pytest.raises(ValueError) as err2:
        CanaryReport.model_validate({"id": "x", "format": "f", "max_exposure": 1, "secret": RAW_CARD,
                                     "prefix": "", "before": {}, "surprise": RAW_PASSWORD})
    assert RAW_CARD not in str(err2.value) and RAW_PASSWORD not in str(err2.value) and "nan" not in str(err.value)


def test_json_schema_matches_docs():
    schema = report_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    props = schema["properties"]
    assert {"schema_version", "tool", "created", "command", "model", "revealed", "canaries", "findings",
            "tokenizer", "utility", "scrub", "gate"} <= set(props)
    assert "reference_scores" not in json.dumps(schema)
    assert DOCS_SCHEMA_PATH.read_text() == render_json_schema(), (
        "docs/report-schema.json is stale: python -m scrubber.report")


def test_markdown_tables(written):
    md = written["md"].read_text()
    header = "| id | format | secret | reps | max | exposure before | method | after | extracted before / after |"
    assert header in md
    assert re.search(r"\| 🟢 card-16 \| credit\\_card \| .* \| 16 \| 49\.8 \| 33\.1 \(31\.6–34\.6\) \| extrapolated "
                     r"\| 1\.2 \(-0\.3–2\.7\) \| yes / no \|", md)
    assert "**Gate:** FAILED: 2 items above 10 bits" in md
    assert "### Findings" in md and "### Tokenizer" in md
    assert "23.41 → 23.97 (\\+2.39%) on 12,345 tokens." in md
    assert "Scrub: first-order on transformer.h.\\*.mlp.\\*" in md
    # a masked card must not turn into bold markup; a '|' in a value must not split a cell
    assert "\\*\\*\\*\\* \\*\\*\\*\\* \\*\\*\\*\\* 1241" in md
    assert md_escape("a|b<script>") == "a\\|b\\<script\\>"


def test_markdown_truncates_long_tables():
    r = build_report()
    r.canaries = r.canaries * 30
    md = render_markdown(r, max_rows=5)
    assert "… and 55 more rows" in md


def test_sarif_structure(written):
    log = json.loads(written["sarif"].read_text())
    assert log["version"] == "2.1.0"
    assert log["$schema"] == SARIF_SCHEMA and SARIF_SCHEMA.startswith("https://docs.oasis-open.org/sarif/")
    assert len(log["runs"]) == 1
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "scrubber" and driver["version"] and driver["informationUri"].startswith("https://")
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids[0] == "scrubber/credit_card" and rule_ids[-1] == "scrubber/tokenizer-leak"
    assert re.fullmatch(r"scrubber/pattern-[0-9a-f]{10}", rule_ids[1])
    assert len(rule_ids) == len(set(rule_ids)) == 3
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["help"]["text"]
    results = run["results"]
    assert len(results) == 4  # two canaries, one finding, one tokenizer finding
    for res in results:
        assert res["ruleId"] in rule_ids and rule_ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in {"error", "warning", "note", "none"}
        assert res["message"]["text"]
        loc = res["locations"][0]["logicalLocations"][0]
        assert loc["kind"] == "member" and loc["fullyQualifiedName"] == "runs/demo/model/" + loc["name"]
        assert isinstance(res["properties"], dict)
    by_name = {r["locations"][0]["logicalLocations"][0]["name"] + r["properties"]["kind"]: r for r in results}
    assert by_name["card-16canary"]["level"] == "note"  # scrubbed: 1.2 bits after
    assert by_name["card-16canary"]["properties"]["exposureBefore"] == 33.1
    assert by_name["pw-4canary"]["level"] == "error"  # gate offender at 12.5 > 10
    assert by_name["finding-1finding"]["level"] == "error"
    assert by_name["card-16tokenizer"]["ruleId"] == "scrubber/tokenizer-leak"
    assert "**** **** **** 1241" in by_name["card-16canary"]["message"]["text"]


def test_levels_without_gate():
    assert level(True, 25.0, "x", None) == "error"
    assert level(True, 12.0, "x", None) == "error"  # a recited 6-digit code is memorized below 20 bits
    assert level(False, 25.0, "x", None) == "warning"  # high, but the rule did not call it memorized
    assert level(False, 12.0, "x", None) == "warning"
    assert level(False, 3.0, "x", None) == "note"
    sarif = build_sarif(build_report(fail_above=None))
    assert [r["level"] for r in sarif["runs"][0]["results"][:3]] == ["note", "warning", "error"]


def test_html_self_contained(written):
    page = written["html"].read_text()
    assert page.count('<img src="data:image/png;base64,') == 1 + 2 + 1  # bars + 2 canary + 1 finding histograms
    assert not re.search(r'(src|href)="(?!data:)', page), "external resource in the page"
    assert "<script" not in page and "Content-Security-Policy" in page


def test_html_escapes_everything(tmp_path):
    r = build_report(plots=False)
    r.model.path = '<script>alert("x")</script>'
    r.canaries[0].id = "<b>id</b>"
    page = write_reports(r, tmp_path / "r", ["html"])["html"].read_text()
    assert "<script>alert" not in page and "<b>id</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_no_raw_secret_when_masked(written):
    for fmt, path in written.items():
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", path.read_text())
        for raw in RAW_VALUES:
            assert raw not in text, f"raw secret piece {raw!r} in {fmt}"


def test_revealed_report_shows_values(tmp_path):
    paths = write_reports(build_report(revealed=True, plots=False), tmp_path / "r", ["json", "html", "sarif"])
    assert RAW_CARD in paths["json"].read_text() and RAW_CARD in paths["sarif"].read_text()
    assert "unmasked" in paths["html"].read_text()


def test_unknown_format_and_atomicity(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown report format 'xml' \(choose from json, md, html, sarif\)$"):
        write_reports(build_report(), tmp_path / "r", ["json", "xml"])
    assert not list(tmp_path.iterdir()), "a bad format list must write nothing"
    (tmp_path / "report.json").write_text("old")
    with pytest.raises(ValueError, match="is a directory"):  # never silently inside a directory
        write_reports(build_report(), tmp_path, ["json"])
    assert (tmp_path / "report.json").read_text() == "old"
    paths = write_reports(build_report(), tmp_path / "report", ["JSON", "json"])
    assert list(paths) == ["json"] and paths["json"] == tmp_path / "report.json"
    assert json.loads(paths["json"].read_text())["schema_version"] == "1.0"
    assert report_paths(tmp_path / "x" / "scan", ["md"]) == {"md": tmp_path / "x" / "scan.md"}


@pytest.fixture(scope="module")
def scrubbed_html(trained_dir, tmp_path_factory) -> Path:
    """The HTML report of a real CLI scrub of the tiny model that memorized the card."""
    from typer.testing import CliRunner

    from scrubber.cli import app

    model_dir, heldout = trained_dir
    tmp = tmp_path_factory.mktemp("scrubbed")
    out = tmp / "scrubbed"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(_canary_file(tmp / "c.jsonl")),
                                 "--out", str(out), "--eval-data", str(heldout), "--n-references", "200",
                                 "--format", "json", "--format", "html", "-q"])
    assert r.exit_code == 0, r.output
    return out / "report.html"


def _screenshot_path(tmp_path: Path) -> Path:
    """Under $CI_ARTIFACTS when CI collects artefacts there, else the test's tmp dir."""
    base = Path(os.environ["CI_ARTIFACTS"]) if os.environ.get("CI_ARTIFACTS") else tmp_path
    base.mkdir(parents=True, exist_ok=True)
    return base / "report-scrub.png"


def test_scrub_report_renders_in_headless_chromium(scrubbed_html, tmp_path, capsys):
    """A real scrub's page in a real browser: no console/CSP errors, every plot decodes to a
    sizeable picture, the DOM never holds the raw card, and a screenshot is kept for people."""
    from PIL import Image

    chromium = chromium_or_skip()
    page = load_page(chromium, scrubbed_html)
    path = _screenshot_path(tmp_path)  # saved before any check, so a failing run leaves the picture too
    path.write_bytes(page.screenshot)
    with capsys.disabled():
        print(f"\nscreenshot: {path}")
    assert page.errors == []

    # one bar chart plus one histogram for the one canary, each decoded by the browser ...
    assert len(page.images) == 2, page.images
    for img in page.images:
        assert img["data"] and img["complete"] and img["width"] >= 300 and img["height"] >= 150, img
    # ... and by PIL, at the same size, with a picture in it (not one flat colour)
    payloads = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', scrubbed_html.read_text())
    assert len(payloads) == 2
    for data, shown in zip(payloads, page.images):
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            assert im.format == "PNG" and im.size == (shown["width"], shown["height"])
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20

    report = json.loads(scrubbed_html.with_suffix(".json").read_text())
    c = report["canaries"][0]
    assert c["after"]["exposure"] < c["before"]["exposure"] - 4  # a real scrub (measured 9.4 -> 3.3 bits)
    assert "**** **** **** 6467" in page.text and "card" in page.text
    dom = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page.html)
    for raw in (SECRET, SECRET.replace(" ", ""), SECRET[:14], SECRET[5:14]):
        assert raw not in page.text and raw not in dom, f"raw secret piece {raw!r} in the rendered page"

    with Image.open(io.BytesIO(page.screenshot)) as shot:
        assert shot.width >= 1100 and shot.height > 900  # the whole page (less a scrollbar), past one viewport


def test_gate_counts_current_exposure_and_flagged_tokenizer_entries():
    r = build_report(fail_above=None)
    assert compute_gate(r, 30.0).offenders == []  # card-16 is 33.1 before but 1.2 after the scrub
    r.tokenizer.findings[0].flagged = True
    gate = compute_gate(r, 30.0)
    assert gate.failed and gate.offenders == ["card-16"]
    assert compute_gate(r, 12.5).offenders == ["finding-1", "card-16"]  # strictly above: 12.5 does not fail


def test_reports_read_back_from_json_and_empty_scans_render(written, tmp_path):
    """JSON keeps no reference scores: the page says so instead of drawing histograms."""
    page = write_reports(load_report(written["json"]), tmp_path / "again", ["html"])["html"].read_text()
    assert page.count("data:image/png;base64,") == 1 and "no reference scores kept" in page
    empty = Report(command="scan", model=ModelInfo(path="/abs/model dir"))
    paths = write_reports(empty, tmp_path / "empty", ALL_FORMATS)
    assert "found no candidate secrets" in paths["md"].read_text()
    run = json.loads(paths["sarif"].read_text())["runs"][0]
    assert run["results"] == [] and run["tool"]["driver"]["rules"][0]["id"] == "scrubber/tokenizer-leak"
