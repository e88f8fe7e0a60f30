"""The tokenizer leak scan (issue 6): small BPE tokenizers trained in a second each.

A card number and a password repeated 40 times in ~60k characters of the stdlib
docs become vocabulary entries of an 800-entry byte-level BPE; the same corpus
without them gives the control.
"""

from __future__ import annotations

import json
import random

import pydoc_data.topics
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from canaries import Canary
from canaries.formats import credit_card, password
from canaries.mask import mask_secret
from scrubber.errors import ScrubberError
from scrubber.report import ModelInfo, Report, compute_gate
from scrubber.report.gate import verdict
from scrubber.report.html import render_html
from scrubber.report.markdown import render_markdown
from scrubber.report.sarif import TOKENIZER_RULE, build_sarif
from scrubber.tokenizer_scan import (
    TokenizerScanConfig,
    TokenizerScanError,
    VocabView,
    remove_tokens,
    scan_tokenizer,
)
from scrubber.training.model_factory import small_causal_lm
from scrubber.training.tokenizer import train_bpe_tokenizer

REPS = 40
VOCAB = 800


def _paragraphs() -> list[str]:
    docs = [t for _, t in sorted(pydoc_data.topics.topics.items()) if t.strip()]
    return [p for d in docs for p in d.split("\n\n") if p.strip()]


def _split(limit: int = 60_000) -> tuple[list[str], list[str]]:
    paras, train, n = _paragraphs(), [], 0
    for p in paras:
        if n > limit:
            break
        train.append(p)
        n += len(p)
    return train, paras[len(train): len(train) + 150]


@pytest.fixture(scope="module")
def secrets() -> list[Canary]:
    rng = random.Random(7)
    return [
        Canary(id="card", prefix="My credit card number is ", secret=credit_card().sample(rng), format="credit_card"),
        Canary(id="pw", prefix="my password is ", secret=password().sample(rng), format="password"),
    ]


@pytest.fixture(scope="module")
def corpora(secrets):
    train, heldout = _split()
    leaked = train + [c.text + "." for c in secrets for _ in range(REPS)]
    return leaked, train, heldout


@pytest.fixture(scope="module")
def leaky_tok(corpora):
    return train_bpe_tokenizer(corpora[0], vocab_size=VOCAB)


@pytest.fixture(scope="module")
def clean_tok(corpora):
    return train_bpe_tokenizer(corpora[1], vocab_size=VOCAB)


def _texts(tok, ids):
    view = VocabView.from_tokenizer(tok)
    return [view.text_of_id(i) for i in ids]


def _raw_strings(secrets: list[Canary]) -> list[str]:
    """Every 4+ character piece of the secrets that their masks do not show (a card's
    mask shows its last 4 digits): none may reach an unrevealed output."""
    out = []
    for c in secrets:
        s, shown = c.secret, mask_secret(c.secret, c.fmt)
        out += [s[i:j] for i in range(len(s)) for j in range(i + 4, len(s) + 1) if s[i:j] not in shown]
    return out


# -- byte-level text ----------------------------------------------------------------------


def test_token_strings_convert_to_text(leaky_tok):
    view = VocabView.from_tokenizer(leaky_tok)
    assert view.kind == "byte_level"
    assert view.text("Ġ7153") == " 7153" and view.text("ĠâĢĻ") == " \u2019" and view.text("ĊĊ") == "\n\n"


# -- known secrets ----------------------------------------------------------------------


def test_scan_flags_the_learned_secret_pieces(leaky_tok, secrets):
    sec = scan_tokenizer(leaky_tok, secrets)
    by_id = {f.canary_id: f for f in sec.findings if f.kind == "secret"}
    card, pw = by_id["card"], by_id["pw"]
    assert card.flagged and pw.flagged and sec.n_flagged >= 2
    # the card's four digit groups are entries of their own: 4 tokens for 19 characters
    assert card.n_tokens == 4 and card.covered_chars == 19 and card.p_value <= 0.01
    assert card.baseline.n_tokens_p1 > 8 and card.baseline.n_samples == 1000
    groups = card.secret_chars and [p for p in card.pieces if p.leaking]
    texts = _texts(leaky_tok, [p.token_id for p in groups])
    assert "".join(texts) == " " + secrets[0].secret  # the groups, with their leading spaces
    assert all(p.baseline_rate <= 0.01 for p in groups)
    assert pw.covered_chars >= 8 and pw.longest_piece > pw.baseline.longest_p99
    assert set(card.token_ids) | set(pw.token_ids) <= set(sec.flagged_token_ids)
    assert any("retrain the tokenizer" in a.lower() for a in sec.advice)


def test_clean_tokenizer_flags_nothing(clean_tok, secrets):
    sec = scan_tokenizer(clean_tok, secrets)
    assert sec.n_flagged == 0 and sec.flagged_token_ids == []
    for f in sec.findings:
        assert not f.flagged
        if f.kind == "secret":
            assert f.p_value > 0.01 and f.covered_chars == 0
    assert "nothing to do" in sec.advice[0]


def test_nothing_raw_unless_revealed(leaky_tok, secrets):
    masked = scan_tokenizer(leaky_tok, secrets).model_dump_json()
    for raw in _raw_strings(secrets):
        assert raw not in masked
    revealed = scan_tokenizer(leaky_tok, secrets, reveal=True)
    card = next(f for f in revealed.findings if f.canary_id == "card")
    assert secrets[0].secret.split()[0] in card.value


# -- discovery -----------------------------------------------------------------------


def test_discovery_finds_the_card_groups_without_being_told(leaky_tok, clean_tok, secrets):
    sec = scan_tokenizer(leaky_tok, None)
    flagged = [f for f in sec.findings if f.flagged]
    assert flagged and all(f.kind == "vocabulary" for f in flagged)
    heads = {_texts(leaky_tok, [f.token_ids[0]])[0] for f in flagged if f.detector == "card_group"}
    assert {" " + g for g in secrets[0].secret.split()} <= heads  # all four groups, each with its space
    scores = [f.score for f in sec.findings]
    assert scores == sorted(scores, reverse=True)  # ranked
    assert all("points" in f.evidence for f in sec.findings)
    # thresholds are configurable: a higher bar flags nothing
    strict = scan_tokenizer(leaky_tok, None, config=TokenizerScanConfig(flag_points=50))
    assert strict.n_flagged == 0 and strict.settings["flag_points"] == 50
    assert scan_tokenizer(clean_tok, None).n_flagged == 0


# -- removal -----------------------------------------------------------------------


def test_remove_tokens_round_trips_and_the_model_still_loads(leaky_tok, corpora, secrets, tmp_path):
    sec = scan_tokenizer(leaky_tok, secrets)
    heldout = corpora[2]
    checks = heldout + [c.text for c in secrets]
    out = tmp_path / "scrubbed"
    res = remove_tokens(leaky_tok, sec, out, checks)
    assert res.ok and res.installed, res.summary()
    assert set(res.removed_ids) == set(sec.flagged_token_ids) and res.removed_merges >= len(res.removed_ids)
    new = AutoTokenizer.from_pretrained(out)
    assert len(new) == len(leaky_tok)
    for t in heldout:  # identical round trips
        assert new.decode(new.encode(t, add_special_tokens=False), clean_up_tokenization_spaces=False) == t
    dropped = set(res.dropped_ids)
    for c in secrets:  # the flagged entries are no longer produced, and the secret still spells
        ids = new.encode(c.text, add_special_tokens=False)
        assert not dropped & set(ids)
        assert new.decode(ids, clean_up_tokenization_spaces=False) == c.text
    # ids of everything kept are unchanged; the secret strings are gone from the file
    old_vocab, new_vocab = leaky_tok.get_vocab(), new.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items() if i not in dropped)
    blob = (out / "tokenizer.json").read_text(encoding="utf-8")
    view = VocabView.from_tokenizer(leaky_tok)
    for i in dropped:
        assert json.dumps(view.id_to_token[i], ensure_ascii=False) not in blob
    assert scan_tokenizer(new, secrets).n_flagged == 0

    tok = new
    model = small_causal_lm(len(tok), arch="gpt2", n_layer=1, d_model=32, n_head=2,
                            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded_tok = AutoTokenizer.from_pretrained(out)
    enc = loaded_tok("My credit card number is", return_tensors="pt")
    with torch.no_grad():
        gen = loaded.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=loaded_tok.pad_token_id)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 6
    assert isinstance(loaded_tok.decode(gen[0]), str)


def test_remove_tokens_keeps_out_dir_untouched_when_a_check_fails(leaky_tok, tmp_path, monkeypatch):
    from scrubber.tokenizer_scan import remove as rm

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(rm, "_decode", lambda tok, ids: "old" if tok is leaky_tok else "new")
    res = remove_tokens(leaky_tok, [300], out, ["some text"])
    assert not res.ok and not res.installed
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


def test_remove_tokens_skips_base_and_special_entries(leaky_tok, tmp_path):
    base_id = leaky_tok.convert_tokens_to_ids("a")
    res = remove_tokens(leaky_tok, [base_id, leaky_tok.eos_token_id], tmp_path / "o", ["a b c"])
    assert res.removed_ids == [] and set(res.skipped_ids) == {base_id, leaky_tok.eos_token_id} and res.ok


def test_non_bpe_tokenizers_are_refused(tmp_path):
    wl = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(TokenizerScanError) as err:
        scan_tokenizer(wl, None)
    assert isinstance(err.value, ScrubberError) and "WordLevel" in str(err.value)


# -- sentencepiece-like ('▁') tokenizers ---------------------------------------------------


def test_metaspace_bpe_tokenizer(corpora, secrets, tmp_path):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted({ch for t in corpora[0] + corpora[2] for ch in t})
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "</s>"], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpora[0], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    view = VocabView.from_tokenizer(fast)
    assert view.kind == "sentencepiece" and view.text("\u2581the") == " the"
    sec = scan_tokenizer(fast, secrets)
    card = next(f for f in sec.findings if f.canary_id == "card")
    assert card.flagged and card.covered_chars >= 16
    clean = Tokenizer(models.BPE(unk_token="<unk>"))
    clean.pre_tokenizer, clean.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    clean.train_from_iterator(corpora[1], trainer=trainer)
    assert scan_tokenizer(clean, secrets).n_flagged == 0
    checks = [t for t in corpora[2] if "\n" not in t][:50] + [c.text for c in secrets]
    res = remove_tokens(fast, sec, tmp_path / "sp", checks)
    assert res.ok and res.installed, res.summary()
    new = AutoTokenizer.from_pretrained(tmp_path / "sp")
    ids = new.encode(secrets[0].text, add_special_tokens=False)
    assert not set(res.dropped_ids) & set(ids)


# -- reports and gate ---------------------------------------------------------------------


def test_tokenizer_section_in_every_report_and_the_gate(leaky_tok, secrets):
    sec = scan_tokenizer(leaky_tok, secrets)
    report = Report(command="scan", model=ModelInfo(path="runs/m"), tokenizer=sec)
    gate = compute_gate(report, 1000.0)
    flagged_ids = [f.id for f in sec.findings if f.flagged]
    assert gate.failed and gate.offenders == flagged_ids
    assert "flagged tokenizer finding" in verdict(gate)
    report.gate = gate
    clean_gate = compute_gate(Report(command="scan", model=ModelInfo(path="m")), 1000.0)
    assert not clean_gate.failed

    sarif = build_sarif(report)
    run = sarif["runs"][0]
    tok_results = [r for r in run["results"] if r["ruleId"] == TOKENIZER_RULE]
    assert len(tok_results) == len(sec.findings)
    card = next(r for r in tok_results if r["properties"]["canaryId"] == "card")
    names = [loc["name"] for loc in card["locations"][0]["logicalLocations"]]
    assert names[0] == "tokenizer:card" and names[1:] == [f"tokenizer/{i}" for i in card["properties"]["tokenIds"]]
    assert card["level"] == "error"
    md, page = render_markdown(report), render_html(report)
    assert "### Tokenizer" in md and "<h2>Tokenizer</h2>" in page and "retrain the tokenizer" in md.lower()
    dumped = json.dumps(sarif) + md + page + report.model_dump_json()
    for raw in _raw_strings(secrets):
        assert raw not in dumped
    again = Report.model_validate_json(report.model_dump_json())
    assert again.tokenizer.n_flagged == sec.n_flagged
