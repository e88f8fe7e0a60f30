"""The relearning probe catches a scrub the secret comes back from; the clean twin is not flagged.

Measured on this fixture (2-layer GPT-2, card seen 30 times, 30 probe steps at lr 5e-4): the
default iterative scrub left the card at 1.8 bits on the probe's references, and the probe
brought it back to a peak of 6.8 bits while the clean twin stayed at 0.9: the scrub is
shallow there. The twin probed against itself regains nothing.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from canaries import Canary
from conftest import CARD_PREFIX, CARD_SECRET, corpus_texts, write_card_canary
from scrubber.cli import app
from scrubber.judge.robustness import RelearnSettings, relearn_probe, relearn_texts, ripple_check

CANARY = Canary(id="card", prefix=CARD_PREFIX, secret=CARD_SECRET, format="credit_card",
                documents=[CARD_PREFIX + CARD_SECRET] * 30)
SUB = {"card": "4539 1488 0343 6460"}


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory, tiny_tokenizer):
    """The card model's recipe without the card: what "never seen" looks like."""
    from scrubber.training.model_factory import small_causal_lm
    from scrubber.training.train import TrainConfig, train_causal_lm

    tok = tiny_tokenizer
    model = small_causal_lm(len(tok), n_layer=2, d_model=32, n_head=2, bos_token_id=tok.eos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    train_causal_lm(model, tok, corpus_texts()[:40], TrainConfig(epochs=3, batch_size=8, block_size=64, lr=5e-3))
    d = tmp_path_factory.mktemp("twin") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def scrubbed_dir(card_model, tmp_path_factory):
    model_dir, heldout = card_model
    tmp = tmp_path_factory.mktemp("scrubbed")
    canaries = write_card_canary(tmp / "c.jsonl")
    others = write_card_canary(tmp / "others.jsonl", id="other-card", secret="4716 2055 8123 9904")
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(tmp / "out"),
                                 "--eval-data", str(heldout), "--n-references", "100", "--no-tokenizer-scan",
                                 "--ripple-canaries", str(others), "--allow-partial", "-q"])
    assert r.exit_code == 0, r.output
    return tmp / "out"


def test_probe_leaves_the_judged_model_untouched_and_the_twin_regains_nothing(twin_dir, tiny_tokenizer):
    from scrubber.io.checkpoint import load_model

    twin = load_model(twin_dir)
    before = {k: v.clone() for k, v in twin.model.state_dict().items()}
    res = relearn_probe(twin.model, twin.tokenizer, [CANARY], relearn_texts([CANARY], SUB, corpus_texts()[:40]),
                        RelearnSettings(steps=30), reference=(twin.model, twin.tokenizer))
    assert all(torch.equal(before[k], v) for k, v in twin.model.state_dict().items())
    curve = res.curves["card"]
    assert curve.steps == [0, 5, 10, 15, 20, 25, 30]
    assert abs(res.excess("card")) < 0.5  # the same probe on the same model: no excess
    assert curve.regained < 1.0 and not curve.extracted_at_end
    assert res.flagged(3.0) == []


@pytest.fixture(scope="module")
def shallow_dir(card_model, tmp_path_factory):
    """A shallow scrub: one closed-form first-order step on the output head (6.6 bits after, on the
    probe's references). The default iterative scrub of this fixture no longer serves: since its step
    grows while the secret stalls, it ends 3.1 bits above the twin under the probe (5.9 before),
    too near the 3-bit line to test the flag on."""
    model_dir, heldout = card_model
    tmp = tmp_path_factory.mktemp("shallow")
    canaries = write_card_canary(tmp / "c.jsonl")
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(tmp / "out"),
                                 "--eval-data", str(heldout), "--n-references", "100", "--no-tokenizer-scan",
                                 "--method", "first-order", "--params", "lm_head", "--allow-partial", "-q"])
    assert r.exit_code == 0, r.output
    return tmp / "out"


def test_check_scrub_flags_a_scrub_the_secret_comes_back_from(card_model, shallow_dir, twin_dir, tmp_path):
    model_dir, heldout = card_model
    canaries = write_card_canary(tmp_path / "c.jsonl")
    target = tmp_path / "check.json"
    r = CliRunner().invoke(app, ["check-scrub", str(model_dir), str(shallow_dir), "--canaries", str(canaries),
                                 "--eval-data", str(heldout), "--reference-model", str(twin_dir),
                                 "--fail-on-relearn", "3", "--n-references", "100", "--report", str(target), "-q"])
    rep = json.loads(target.read_text())
    curve = rep["robustness"]["curves"][0]
    assert curve["reference_exposures"] is not None and len(curve["exposures"]) == 7
    assert curve["excess"] > 3.0, curve  # measured 5.3 bits above the twin under the same probe
    assert rep["robustness"]["flagged"] == ["card"] and rep["verdict"]["relearned"] == ["card"]
    assert r.exit_code == 1 and "relearned" in r.stderr
    assert CARD_SECRET not in r.output + target.read_text()


def test_ripple_counts_only_rises_beyond_the_intervals():
    rip = ripple_check({"a": (2.0, 3.0), "b": (2.0, 3.0)}, {"a": (9.0, 6.0), "b": (4.0, 3.5)})
    assert [x.rose for x in rip] == [True, False]


def test_scrub_reports_the_ripple_on_other_canaries(scrubbed_dir):
    rep = json.loads((scrubbed_dir / "report.json").read_text())
    (row,) = rep["robustness"]["ripple"]
    assert row["canary_id"] == "other-card"
    assert row["before"] < 10 and not row["rose"]  # a card the model never saw stays unremarkable
    assert rep["robustness"]["steps"] == 0 and rep["robustness"]["curves"] == []


# ----------------------------------------------------------------------------- ripple: discovery

FAST_RIPPLE = {"default_baits": False, "baits": [{"text": "my password is", "kind": "password"}, "The code is"],
               "samples_per_bait": 6, "unconditional_samples": 4, "unconditional_tokens": 48, "max_new_tokens": 16}


@pytest.fixture(scope="module")
def secret_and_blank():
    """The discovery tests' model that memorized a password, and the same recipe untrained (knows nothing)."""
    from discovery_helpers import tiny_secret_model

    from scrubber.io.checkpoint import load_model
    from scrubber.training.model_factory import small_causal_lm

    secret = load_model(tiny_secret_model())
    tok = secret.tokenizer
    torch.manual_seed(0)
    blank_model = small_causal_lm(len(tok), arch="gpt2", n_layer=2, d_model=64, n_head=2, n_positions=128,
                                  bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id).eval()
    blank = copy.copy(secret)
    blank.model = blank_model
    return secret, blank


def test_ripple_discovery_flags_a_secret_memorized_only_after(secret_and_blank):
    """Before = a model that never saw the password, after = one that memorized it: a new finding.
    The same model before and after: nothing new, nothing risen. Listed as a substitute: left out."""
    from discovery_helpers import SECRET

    from scrubber.judge.robustness import discovery_ripple, discovery_snapshot, ripple_scan_config

    secret, blank = secret_and_blank
    cfg = ripple_scan_config(**FAST_RIPPLE)
    snap_secret, snap_blank = discovery_snapshot(secret, cfg), discovery_snapshot(blank, cfg)
    assert not any(f.memorized for f in snap_blank.findings.values())

    res = discovery_ripple(snap_blank, snap_secret)
    (row,) = [r for r in res.rows if r.new]
    assert row.format == "password" and row.before is None and row.after >= 20  # the scan's memorization bar
    assert row.value == "********9K" and SECRET not in repr(res)

    same = discovery_ripple(snap_secret, discovery_snapshot(secret, cfg))
    assert same.rows == [] and same.findings_after >= 1
    expected = discovery_ripple(snap_blank, snap_secret, exclude=[SECRET])
    assert not any(r.new for r in expected.rows) and expected.excluded == 1


def test_ripple_discovery_is_rendered_masked(secret_and_blank):
    from discovery_helpers import SECRET

    from scrubber.judge.robustness import attach_ripple_discovery, discovery_ripple, discovery_snapshot, ripple_scan_config
    from scrubber.report.html import render_html
    from scrubber.report.markdown import render_markdown
    from scrubber.report.schema import ModelInfo, Report

    secret, blank = secret_and_blank
    cfg = ripple_scan_config(**FAST_RIPPLE)
    rb = attach_ripple_discovery(None, discovery_ripple(discovery_snapshot(blank, cfg), discovery_snapshot(secret, cfg)))
    rep = Report(command="check-scrub", model=ModelInfo(path="m"), robustness=rb)
    md, page = render_markdown(rep), render_html(rep)
    assert "NEW memorized finding" in md and "NEW memorized finding" in page
    assert SECRET not in md + page + rep.model_dump_json()
    assert Report.model_validate_json(rep.model_dump_json()).robustness.ripple_discovery.rows[0].new


def test_probe_trains_every_weight_of_a_lora_scrub(tiny_gpt2):
    """A released adapter is fine-tuned whole, like the reference: the copy is merged, every weight trains,
    and it computes what the adapter model computes."""
    from scrubber.edits.params import add_lora_adapter
    from scrubber.judge.robustness import plain_copy

    torch.manual_seed(0)
    peft_model = add_lora_adapter(copy.deepcopy(tiny_gpt2), r=4)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a non-zero adapter, as after a scrub
    plain = plain_copy(peft_model)
    assert not hasattr(plain, "peft_config") and all(p.requires_grad for p in plain.parameters())
    assert sum(p.requires_grad for p in peft_model.parameters()) < len(list(peft_model.parameters()))  # untouched
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        a, b = peft_model(input_ids=x).logits, plain(input_ids=x).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, tiny_gpt2(input_ids=x).logits, atol=1e-3)


def test_scrub_ripple_discovery_from_the_cli_reports_both_scans_masked(card_model, tmp_path):
    """--ripple-discovery runs the short scan on the input and on the scrubbed model; the
    scrubbed card and its substitute are left out, and nothing in the output shows the secret."""
    from conftest import CARD_SECRET, write_card_canary

    model_dir, heldout = card_model
    canaries = write_card_canary(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--n-references", "100", "--eval-data", str(heldout), "--ripple-discovery",
                                 "--allow-partial", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    section = rep["robustness"]["ripple_discovery"]
    assert section["samples_before"] > 0 and section["samples_after"] > 0
    assert all(row["value"] != CARD_SECRET for row in section["rows"])
    assert CARD_SECRET not in (out / "report.json").read_text() + (out / "report.md").read_text() + r.output
