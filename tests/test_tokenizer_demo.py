"""Acceptance of the tokenizer leak scan on the real demo (issue 6).

The demo tokenizer is trained on the corpus with the canaries in it; the control
is the demo built without canaries (same seed otherwise), scanned for the same
secrets. Both builds are cached (SCRUBBER_CACHE), so only the first run trains.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scrubber.io.data import load_texts
from scrubber.demo.build import DemoSpec, build_demo
from scrubber.tokenizer_scan import VocabView, remove_tokens, scan_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demos():
    torch.set_num_threads(1)
    return build_demo(DemoSpec()), build_demo(DemoSpec(with_canaries=False))


def test_demo_scan_reports_the_most_repeated_canaries_and_nothing_for_the_clean_demo(demos):
    leaky, clean = demos
    canaries = leaky.canaries
    assert canaries and not clean.canaries
    tok = AutoTokenizer.from_pretrained(leaky.model_dir)
    sec = scan_tokenizer(tok, canaries)
    known = {f.canary_id: f for f in sec.findings if f.kind == "secret"}
    top = max(c.repetitions for c in canaries)
    for c in canaries:
        f = known[c.id]
        if c.repetitions == top:  # every format's most repeated canary: flagged, mostly covered
            assert f.flagged and f.covered_chars >= 0.8 * len(c.secret), (c.id, f.evidence)
        if c.repetitions <= 4:  # a few copies teach the tokenizer nothing beyond chance
            assert not f.flagged, (c.id, f.evidence)
    # the control: same secrets, tokenizer trained without them
    clean_sec = scan_tokenizer(AutoTokenizer.from_pretrained(clean.model_dir), canaries)
    assert clean_sec.n_flagged == 0, [(f.id, f.evidence) for f in clean_sec.findings if f.flagged]

    # discovery alone finds the most repeated card's digit groups
    disc = scan_tokenizer(tok, None)
    view = VocabView.from_tokenizer(tok)
    heads = {view.text_of_id(f.token_ids[0]) for f in disc.findings if f.flagged}
    card = next(c for c in canaries if c.format == "credit_card" and c.repetitions == top)
    assert {" " + g for g in card.secret.split()} <= heads


def test_demo_token_removal_round_trips_and_the_model_generates(demos, tmp_path):
    leaky, _ = demos
    tok = AutoTokenizer.from_pretrained(leaky.model_dir)
    sec = scan_tokenizer(tok, leaky.canaries)
    out = tmp_path / "model"
    shutil.copytree(leaky.model_dir, out)
    heldout = load_texts(leaky.heldout_path)
    checks = heldout + [c.text for c in leaky.canaries]
    res = remove_tokens(tok, sec, out, checks)
    assert res.ok and res.installed, res.summary()
    new = AutoTokenizer.from_pretrained(out)
    assert len(new) == len(tok)
    for t in heldout:
        assert new.decode(new.encode(t, add_special_tokens=False), clean_up_tokenization_spaces=False) == t
    assert scan_tokenizer(new, leaky.canaries).n_flagged == 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    enc = new("My credit card number is", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=new.pad_token_id)
    assert gen.shape[1] > enc["input_ids"].shape[1]  # greedy may stop at EOS
    assert isinstance(new.decode(gen[0]), str)
