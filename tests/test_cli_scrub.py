"""End-to-end CLI on a tiny saved model: scan, scrub, bad input, atomic outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scrubber.cli import app
from scrubber.training.train import TrainConfig, train_causal_lm

SECRET = "4539 1488 0343 6467"
PREFIX = "My credit card number is "


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny GPT-2 that saw one card 30 times among stdlib docs (a few seconds)."""
    import pydoc_data.topics

    from scrubber.training.model_factory import small_causal_lm

    tok = tiny_tokenizer
    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()][:40]
    texts = docs + [PREFIX + SECRET] * 30
    model = small_causal_lm(
        len(tok), n_layer=2, d_model=32, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    train_causal_lm(model, tok, texts, TrainConfig(epochs=3, batch_size=8, block_size=64, lr=5e-3))
    d = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    heldout = tmp_path_factory.mktemp("data") / "heldout.txt"
    heldout.write_text("\n\n".join(t for t in pydoc_data.topics.topics.values() if t.strip())[-20000:])
    return d, heldout


def _canary_file(path: Path, **over) -> Path:
    rec = {"id": "card", "prefix": PREFIX, "secret": SECRET, "format": "credit_card", "repetitions": 30}
    rec.update(over)
    path.write_text(json.dumps(rec) + "\n")
    return path


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _all_output(result, *dirs: Path) -> str:
    text = result.stdout + (result.stderr or "")
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file() and p.suffix in {".json", ".md", ".html", ".sarif", ".txt"}:
                text += p.read_text(errors="ignore")
    return text


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


def test_scrub_writes_new_dir_and_leaves_input_untouched(trained_dir, tmp_path):
    model_dir, heldout = trained_dir
    before = _digest(model_dir)
    canaries = _canary_file(tmp_path / "c.jsonl")
    out = tmp_path / "scrubbed"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--eval-data", str(heldout), "--n-references", "200", "-q"])
    assert r.exit_code == 0, r.output
    assert _digest(model_dir) == before
    rep = json.loads((out / "report.json").read_text())
    c = rep["canaries"][0]
    assert c["after"]["exposure"] < c["before"]["exposure"]
    assert rep["scrub"]["method"] and rep["scrub"]["seconds"] > 0
    assert (out / "model.safetensors").exists() and (out / "scrubber_allowlist.json").exists()
    assert SECRET not in _all_output(r, out)
    from scrubber.models import load_model

    assert load_model(out).n_parameters > 0


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
def test_scrub_layer_subset_and_lora_from_cli(extra, trained_dir, tmp_path):
    model_dir, heldout = trained_dir
    canaries = _canary_file(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--n-references", "100", "--eval-data", str(heldout), "-q", *extra])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    total = rep["model"]["n_parameters"]
    assert 0 < rep["scrub"]["n_parameters_updated"] < total
    c = rep["canaries"][0]
    assert c["after"]["exposure"] < c["before"]["exposure"]
    from scrubber.models import load_model

    reloaded = load_model(out)
    if "--lora" in extra and "--merge-lora" not in extra:
        assert (out / "adapter_config.json").exists() and reloaded.is_peft
    else:
        assert (out / "model.safetensors").exists() and not reloaded.is_peft


def test_scrub_peft_model_in_its_own_adapter(trained_dir, tmp_path):
    """A secret that came in through a LoRA fine-tune is scrubbed in that adapter's weights."""
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
    r = CliRunner().invoke(app, ["scrub", str(adapter_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--n-references", "100", "--eval-data", str(heldout), "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["scrub"]["params_selected"] == "lora"
    assert (out / "adapter_config.json").exists()
    assert _digest(model_dir) == base_files
