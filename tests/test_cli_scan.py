"""`scrubber scan` (discovery), `train` and `canaries inject` through the CLI: exit codes,
SARIF, the canary file, and no raw secret in any output unless --reveal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scrubber.cli import app

from discovery_helpers import FAST_SCAN_YAML, SECRET, tiny_secret_model



@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_secret_model()


@pytest.fixture
def fast_cfg(tmp_path) -> Path:
    p = tmp_path / "fast.yaml"
    p.write_text(FAST_SCAN_YAML)
    return p


def run(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def files_under(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()]


def assert_no_raw_secret(result, out_dir: Path, secrets=(SECRET,), skip: tuple[Path, ...] = ()):
    for s in secrets:
        assert s not in result.stdout
        assert s not in (result.stderr or "")
        for f in files_under(out_dir):
            if f in skip:
                continue
            assert s not in f.read_text(encoding="utf-8", errors="replace"), f"raw secret in {f.name}"


def test_scan_gate_fails_writes_sarif_and_masks(model_dir, fast_cfg, tmp_path):
    out = tmp_path / "out"
    emitted = out / "found.jsonl"
    r = run(["scan", model_dir, "--config", fast_cfg, "--fail-above", "20", "--report", out / "report",
             "--format", "json", "--format", "sarif", "--format", "md", "--format", "html",
             "--emit-canaries", emitted])
    assert r.exit_code == 1, r.output
    rep = json.loads((out / "report.json").read_text())
    top = rep["findings"][0]
    assert top["memorized"] and top["format"] == "password" and top["exposure"]["exposure"] > 20
    assert top["id"] in rep["gate"]["offenders"] and rep["gate"]["failed"]
    sarif = json.loads((out / "report.sarif").read_text())
    assert sarif["version"] == "2.1.0"
    run0 = sarif["runs"][0]
    assert run0["tool"]["driver"]["rules"]
    res = run0["results"][0]
    assert {"ruleId", "level", "message"} <= set(res) and res["level"] == "error"
    assert res.get("locations") and res["locations"][0].get("logicalLocations")
    # the canary file: raw by necessity, private, and `scrubber scrub` reads it
    from canaries import load_canaries

    assert stat.S_IMODE(os.stat(emitted).st_mode) == 0o600
    canaries = load_canaries(emitted)
    assert SECRET in [c.secret for c in canaries]
    assert all(set(json.loads(line)) == {"id", "prefix", "secret", "format"}
               for line in emitted.read_text().splitlines())
    assert_no_raw_secret(r, out, skip=(emitted,))
    assert "mode 0600" in r.stderr


def test_scan_gate_passes_below_threshold(model_dir, fast_cfg, tmp_path):
    r = run(["scan", model_dir, "--config", fast_cfg, "--fail-above", "500", "--report",
             tmp_path / "rep", "--format", "json", "--quiet"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert {k: rep["gate"][k] for k in ("fail_above", "failed", "offenders")} == {
        "fail_above": 500.0, "failed": False, "offenders": []}
    assert rep["gate"]["bits_offenders"] == [] and rep["gate"]["tokenizer_offenders"] == []
    assert any(f["memorized"] for f in rep["findings"])
    assert_no_raw_secret(r, tmp_path)


def test_reveal_shows_the_secret(model_dir, fast_cfg, tmp_path):
    r = run(["scan", model_dir, "--config", fast_cfg, "--reveal", "--report", tmp_path / "rep",
             "--format", "json", "--quiet"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["revealed"] and SECRET in [f["value"] for f in rep["findings"]]


@pytest.mark.parametrize("args, message", [
    (["scan", "{tmp}/missing"], "not found"),
    (["scan", "{model}", "--format", "pdf"], "formats"),
    (["scan", "{model}", "--temperature", "0"], "temperature"),
    (["scan", "{model}", "--config", "{tmp}/bad.yaml"], "unknown option"),
    (["scan", "{model}", "--canaries", "{tmp}/none.jsonl", "--emit-canaries", "{tmp}/x.jsonl"],
     "needs discovery"),
    (["scan", "{model}", "--canaries", "{tmp}/none.jsonl"], "canary file not found"),
    (["canaries", "inject", "--data", "{tmp}/missing.jsonl", "--out", "{tmp}/inj"], "not found"),
    (["canaries", "inject", "--data", "{tmp}/d.txt", "--out", "{tmp}/inj", "--formats", "nope"], "format"),
    (["canaries", "inject", "--data", "{tmp}/d.txt", "--out", "{tmp}/inj", "--repetitions", "1,x"],
     "repetitions"),
    (["train", "{model}", "--data", "{tmp}/d.txt"], "--out"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(model_dir, tmp_path, args, message):
    work = tmp_path / "work"
    work.mkdir()
    (work / "bad.yaml").write_text("no_such_option: 1\n")
    (work / "d.txt").write_text("some text\n\nmore text\n")
    before = set(files_under(work))
    argv = [a.format(tmp=work, model=model_dir) for a in args]
    cwd = os.getcwd()
    os.chdir(work)  # --format without --report would write ./report.*
    try:
        r = run(argv + ["--report", str(work / "rep")] if argv[0] == "scan" else argv)
    finally:
        os.chdir(cwd)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert set(files_under(work)) == before


def test_canaries_inject_then_train_audit(model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    docs = [{"text": f"Ticket {i}: the printer on floor {i % 5} is out of toner again.", "n": i}
            for i in range(40)]
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    inj = tmp_path / "inj"
    r = run(["canaries", "inject", "--data", data, "--formats", "password,digits8",
             "--repetitions", "1,8", "--out", inj, "--seed", "3"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (inj / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 40 + 2 * (1 + 8) and set(rows[0]) == {"text", "n"}
    manifest = json.loads((inj / "manifest.json").read_text())
    assert set(manifest["canaries"]) == {"password-r1", "password-r8", "digits8-r1", "digits8-r8"}
    assert stat.S_IMODE(os.stat(inj / "canaries.jsonl").st_mode) == 0o600
    secrets = [json.loads(x)["secret"] for x in (inj / "canaries.jsonl").read_text().splitlines()]

    out = tmp_path / "audit"
    r = run(["train", model_dir, "--data", data, "--out", out, "--canary-formats", "password",
             "--repetitions", "2,8", "--epochs", "2", "--block-size", "32", "--lr", "3e-3",
             "--n-references", "100", "--exposure-method", "extrapolated", "--fail-above", "1000",
             "--format", "json", "--format", "sarif", "--quiet"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert {c["id"] for c in rep["canaries"]} == {"password-r2", "password-r8"}
    assert all(c["before"]["exposure"] >= 0 for c in rep["canaries"])
    assert (out / "model" / "config.json").is_file() and (out / "manifest.json").is_file()
    assert stat.S_IMODE(os.stat(out / "canaries.jsonl").st_mode) == 0o600
    trained = [json.loads(x)["secret"] for x in (out / "canaries.jsonl").read_text().splitlines()]
    # canary file and manifest hold the canaries raw by design (both private); the
    # reports, the logs and the model's own files do not
    assert stat.S_IMODE(os.stat(out / "manifest.json").st_mode) == 0o600
    assert_no_raw_secret(r, out, secrets=trained, skip=(out / "canaries.jsonl", out / "manifest.json"))
    assert all(s not in r.stdout + r.stderr for s in secrets)


def test_ci_preset_and_example_job_are_valid():
    import yaml

    from scrubber.config import load_config
    from scrubber.discovery.config import DiscoverScanConfig

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(DiscoverScanConfig, root / "configs" / "ci-gate.yaml", {})
    assert cfg.fail_above == 20 and "sarif" in cfg.formats and not cfg.reveal
    job = yaml.safe_load((root / "docs" / "ci" / "github-actions.yml").read_text())
    steps = job["jobs"]["memorized-secrets"]["steps"]
    assert any("--fail-above" in s.get("run", "") for s in steps)
    assert any(s.get("uses", "").startswith("github/codeql-action/upload-sarif") for s in steps)
