"""The README's first command, end to end: `scrubber demo` as a user runs it (the installed
entry point, in a subprocess), on the reduced preset so CI can afford it.

The quick demo trains its own 2-layer model from scratch in a temporary cache, so this
also covers the cold path (tokenizer, training, injection) that cached runs skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from canaries import load_canaries
from conftest import console_script
from scrubber.report.schema import Report


def _scrubber() -> list[str]:
    exe = console_script("scrubber")
    return [exe] if exe else [sys.executable, "-m", "scrubber.cli"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = _scrubber() + ["demo", "--quick", "--out", str(root / "out"), "--cache-dir", str(root / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    return root, proc


def test_demo_exits_0_with_a_passing_verdict_and_every_artefact(demo_run):
    root, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = root / "out"
    for name in ("model/config.json", "model/model.safetensors", "scrubbed/model.safetensors",
                 "scrubbed/scrubber_allowlist.json", "canaries.jsonl", "heldout.jsonl", "retain.jsonl",
                 "report.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".out.*")), "a temporary output directory was left behind"


def test_demo_report_meets_the_report_contract(demo_run):
    root, _ = demo_run
    raw = json.loads((root / "out" / "report.json").read_text())
    rep = Report.model_validate(raw)  # the schema docs/report-schema.json is generated from
    assert rep.command == "demo"
    assert len(rep.canaries) == 6
    assert rep.verdict is not None and rep.verdict.passed
    assert rep.scrub is not None and rep.utility is not None
    # the 64-repetition canaries are memorized (> 20 bits) and scrubbed to at most the 3-bit target
    r64 = [c for c in rep.canaries if c.repetitions == 64]
    assert len(r64) == 3
    for c in r64:
        assert c.before.exposure > 20, (c.id, c.before.exposure)
        assert c.after is not None and c.after.exposure <= 3.0 + 1e-6, (c.id, c.after.exposure)
        assert c.nonmember is not None and c.nonmember.verdict == "inside", c.id


def test_demo_output_never_shows_a_secret(demo_run):
    root, proc = demo_run
    out = root / "out"
    secrets = [c.secret for c in load_canaries(out / "canaries.jsonl")]
    texts = [proc.stdout, proc.stderr] + [(out / f"report.{ext}").read_text() for ext in ("json", "md", "html")]
    for s in secrets:
        for t in texts:
            assert s not in t
