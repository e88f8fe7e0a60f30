"""End-to-end CLI on a tiny saved model: scan, scrub, bad input, atomic outputs.

Scrub effects are judged outside the CLI's own measurement: exposure against
references drawn with a seed neither the report (``--seed`` 0) nor the scrub's
probe (seed 1) uses, and perplexity on documents (stdlib docs 40–69) that neither
trained the model nor entered the scrub (``--eval-data`` is docs 73+).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CARD_PREFIX as PREFIX, CARD_SECRET as SECRET, write_card_canary
from scrubber.cli import app

# fixture values live in conftest (card_model); the names here are what other test modules import
JUDGE_SEED = 20261201
"""References for judging a scrub: neither the report (--seed 0) nor the probe (seed 1) uses it."""


@pytest.fixture(scope="module")
def trained_dir(card_model):
    """A tiny GPT-2 that saw one card 30 times among stdlib docs, and held-out text (conftest.card_model)."""
    return card_model


def _canary_file(path: Path, **over) -> Path:
    return write_card_canary(path, **over)


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _all_output(result, *dirs: Path) -> str:
    text = result.stdout + (result.stderr or "")
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file() and p.suffix in {".json", ".md", ".html", ".sarif", ".txt"}:
                text += p.read_text(errors="ignore")
    return text


@dataclass(frozen=True)
class Judged:
    exposure: float
    perplexity: float


def judge(model_dir: Path) -> Judged:
    """Exposure on independent references (512) and perplexity on never-seen documents."""
    import pydoc_data.topics

    from canaries import Canary
    from scrubber.measure.exposure.engine import measure_exposure
    from scrubber.io.checkpoint import load_model
    from scrubber.measure.utility import perplexity

    loaded = load_model(model_dir)
    canary = Canary(id="card", prefix=PREFIX, secret=SECRET, format="credit_card")
    e = measure_exposure(loaded.model, loaded.tokenizer, canary, method="extrapolated", n_references=512,
                         seed=JUDGE_SEED, keep_reference_scores=False).exposure
    unseen = [t for t in pydoc_data.topics.topics.values() if t.strip()][40:70]
    return Judged(e, perplexity(loaded.model, loaded.tokenizer, unseen, max_tokens=20_000)[0])


@pytest.fixture(scope="module")
def judged_input(trained_dir) -> Judged:
    return judge(trained_dir[0])


# Judged on this fixture (input: 11.65 bits on the judge's references, 56.00 ppl on unseen docs);
# first at commit 816d134, then [in brackets] with the probe-margin/utility-bound pipeline in progress:
#   default (iterative, all weights)   -> 3.73 bits, ppl -0.17%   [2.02 bits, +0.29%]
#   --params -1:/mlp [--step-size 5e-3]      -> 3.48 bits, ppl +0.94%   [1.98 bits, +3.45%]
#   --lora (± --merge-lora) [--step-size 5e-3] -> 3.46 bits, ppl +2.09%   [2.13 bits, +3.51%]
# At a fixed default step (2e-4) a layer subset or LoRA used all 60 steps and only reached
# 9.99 / 10.42 bits, hence a --step-size of 5e-3 there until the step learned to grow while the
# secret stalls (up to 32x): now both run at the default and pass the same bounds. Bounds: a drop of 6+ bits, within 2 bits of
# the 3-bit target on references the scrub never scored, under 6% perplexity on unseen text.
SCRUB_BOUNDS = dict(drop=6.0, max_after=5.0, max_rise=0.06)


def _assert_scrubbed(before: Judged, after: Judged, *, drop: float, max_after: float, max_rise: float) -> None:
    """A real drop of ``drop`` bits to at most ``max_after``, for at most ``max_rise`` relative perplexity."""
    rise = after.perplexity / before.perplexity - 1
    assert before.exposure - after.exposure >= drop and after.exposure <= max_after, (before, after)
    assert rise <= max_rise, (before, after)


def test_scan_reports_masked_exposure(trained_dir, tmp_path):
    model_dir, heldout = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    r = CliRunner().invoke(app, ["scan", str(model_dir), "--canaries", str(canaries), "--eval-data", str(heldout),
                                 "--report", str(tmp_path / "rep"), "--n-references", "200", "--format", "json",
                                 "--format", "sarif", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    c = rep["canaries"][0]
    assert c["secret"] == "**** **** **** 6467"
    assert c["before"]["exposure"] > 8  # memorized well above a random value's ~1.4 bits
    assert c["before"]["exposure_method"] in {"extrapolated", "search", "exact", "interpolated"}
    assert rep["utility"]["perplexity_before"] > 1
    assert SECRET not in _all_output(r, tmp_path)


def test_scrub_writes_new_dir_and_leaves_input_untouched(trained_dir, judged_input, tmp_path):
    model_dir, heldout = trained_dir
    before = _digest(model_dir)
    canaries = _canary_file(tmp_path / "c.jsonl")
    out = tmp_path / "scrubbed"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--eval-data", str(heldout), "--n-references", "200", "-q"])
    assert r.exit_code == 0, r.output
    assert _digest(model_dir) == before
    rep = json.loads((out / "report.json").read_text())
    assert rep["scrub"]["method"] == "iterative"  # the default
    assert (out / "model.safetensors").exists() and (out / "scrubber_allowlist.json").exists()
    assert SECRET not in _all_output(r, out)
    _assert_scrubbed(judged_input, judge(out), **SCRUB_BOUNDS)


@pytest.mark.parametrize(
    "case",
    ["missing_model", "not_a_model", "malformed", "bad_secret", "unknown_format", "pickle_only"],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, trained_dir, tmp_path):
    model_dir, _ = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    target = model_dir
    if case == "missing_model":
        target = tmp_path / "nope"
    elif case == "not_a_model":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "malformed":
        canaries.write_text("{not json\n")
    elif case == "bad_secret":
        _canary_file(canaries, secret="4539 1488 0343 6468")  # Luhn-invalid
    elif case == "unknown_format":
        _canary_file(canaries, format="iban")
    elif case == "pickle_only":
        target = tmp_path / "pkl"
        target.mkdir()
        (target / "config.json").write_text((model_dir / "config.json").read_text())
        (target / "pytorch_model.bin").write_bytes(b"\x80\x04")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["scrub", str(target), "--canaries", str(canaries), "--out", str(out), "-q"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in (r.stderr or r.output).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert "4539 1488 0343 646" not in r.output


def test_refuses_output_inside_input(trained_dir, tmp_path):
    model_dir, _ = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries),
                                 "--out", str(model_dir / "sub"), "-q"])
    assert r.exit_code == 2
    assert "overlaps the input" in r.output
    assert not (model_dir / "sub").exists()


def test_config_file_rejects_unknown_keys(trained_dir, tmp_path):
    model_dir, _ = trained_dir
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n_references: 100\nbogus_key: 1\n")
    r = CliRunner().invoke(app, ["scan", str(model_dir), "--config", str(cfg), "-q"])
    assert r.exit_code == 2
    assert "unknown option 'bogus_key'" in r.output


@pytest.mark.parametrize("extra", [["--params", "-1:/mlp"], ["--lora"], ["--lora", "--merge-lora"]])
def test_scrub_layer_subset_and_lora_from_cli(extra, trained_dir, judged_input, tmp_path):
    import torch

    torch.manual_seed(0)  # a fresh LoRA adapter's init is random: same init, same result, whatever the test order
    model_dir, heldout = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--n-references", "100", "--eval-data", str(heldout), "-q", *extra])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    total = rep["model"]["n_parameters"]
    assert 0 < rep["scrub"]["n_parameters_updated"] < total
    _assert_scrubbed(judged_input, judge(out), **SCRUB_BOUNDS)
    from scrubber.io.checkpoint import load_model

    reloaded = load_model(out)
    if "--lora" in extra and "--merge-lora" not in extra:
        assert (out / "adapter_config.json").exists() and reloaded.is_peft
    else:
        assert (out / "model.safetensors").exists() and not reloaded.is_peft


def test_scrub_params_auto_moves_only_the_localized_tensors(trained_dir, judged_input, tmp_path):
    """--params auto: the tensors are chosen from the secrets' and the retain text's gradients
    (scrubber.edits.localize), the report names them, and the scrub meets the same bounds on
    references and documents it never read."""
    model_dir, heldout = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--n-references", "100", "--eval-data", str(heldout), "--params", "auto", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    loc = rep["scrub"]["extra"]["localization"]
    assert rep["scrub"]["params_selected"] == "auto"
    assert loc["covered"] >= 0.8 and loc["names"]
    assert rep["scrub"]["n_parameters_updated"] == loc["numel"] < 0.8 * rep["model"]["n_parameters"]
    _assert_scrubbed(judged_input, judge(out), **SCRUB_BOUNDS)


@pytest.mark.parametrize("extra, message", [
    (["--params", "auto", "--lora"], "--params auto does not combine with --lora"),
    (["--localize-mass", "0.5"], "--localize-mass applies to --params auto only"),
])
def test_localisation_options_refuse_what_they_cannot_do(extra, message, trained_dir, tmp_path):
    model_dir, heldout = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(tmp_path / "o"),
                                 "--eval-data", str(heldout), *extra])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("params", ["all", "auto"])
def test_scrub_peft_model_in_its_own_adapter(params, trained_dir, tmp_path):
    """A secret that came in through a LoRA fine-tune is scrubbed in that adapter's weights
    (with --params auto: in the adapter tensors the localisation chose)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_dir, heldout = trained_dir
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn", "c_fc"], init_lora_weights=False))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    base_files = _digest(model_dir)
    canaries = _canary_file(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    # the random adapter leaves the card at ~2.9 bits: this checks where the update goes, not its
    # effect, so a missed target must not fail it (--allow-partial); the verdict is still written
    r = CliRunner().invoke(app, ["scrub", str(adapter_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--n-references", "100", "--eval-data", str(heldout), "--allow-partial", "-q",
                                 "--params", params])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["scrub"]["params_selected"] == ("lora" if params == "all" else "auto") and "passed" in rep["verdict"]
    if params == "auto":
        names = rep["scrub"]["extra"]["localization"]["names"]
        assert names and all("lora_" in n for n in names), names
    assert (out / "adapter_config.json").exists()
    assert _digest(model_dir) == base_files


def test_second_order_solver_and_certified_head_are_reachable_from_the_cli(trained_dir, tmp_path):
    """--solver reaches the method (the report says which solved it); certified-head refuses
    the fixture's tied head with one line, before anything is written."""
    model_dir, heldout = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    out = tmp_path / "kfac"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--n-references", "100", "--eval-data", str(heldout), "--method", "second-order",
                                 "--solver", "kfac", "--newton-steps", "2", "--allow-partial", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["scrub"]["method"] == "second-order" and rep["scrub"]["extra"]["solver"] == "kfac"
    before, after = rep["canaries"][0]["before"]["exposure"], rep["canaries"][0]["after"]["exposure"]
    assert after < before - 3, (before, after)

    tied = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(tmp_path / "ch"),
                                    "--eval-data", str(heldout), "--method", "certified-head", "-q"])
    assert tied.exit_code == 2
    assert tied.output.count("\n") == 1 and "tied" in tied.output
    assert not (tmp_path / "ch").exists()

    wrong = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(tmp_path / "w"),
                                     "--eval-data", str(heldout), "--solver", "lissa", "-q"])
    assert wrong.exit_code == 2 and "--solver applies to second-order only, not iterative" in wrong.output
