"""Substitutes: same shape, never the secret, never a real-looking card; hashed allowlist."""

from __future__ import annotations

import json
import random

import pytest
import torch

from canaries.formats import get_format, luhn_valid
from canaries.substitutes import (
    ALLOWLIST_FILE,
    Allowlist,
    AllowlistError,
    SubstituteError,
    make_substitute,
)
from scrubber.edits.substitutes import model_guided_substitute

CARD = "4539 1488 0343 6467"
CASES = [("credit_card", CARD), ("credit_card_dashed", "4539-1488-0343-6467"),
         ("password", "aB3dE6gH9k"), ("digits", "123456"), ("EMP-[0-9]{6}", "EMP-000000")]


@pytest.mark.parametrize("name,secret", CASES)
@pytest.mark.parametrize("strategy", ["random", "placeholder"])
def test_substitute_has_the_shape_and_differs(name, secret, strategy):
    fmt = get_format(name)
    for seed in range(20):
        sub = make_substitute(secret, fmt, strategy, random.Random(seed))
        assert fmt.regex.fullmatch(sub), sub
        assert sub != secret
        if fmt.luhn:
            assert not luhn_valid(sub)
        else:
            assert fmt.matches(sub)


def test_random_card_substitutes_are_all_luhn_invalid_and_varied():
    fmt = get_format("credit_card")
    rng = random.Random(0)
    subs = [make_substitute(CARD, fmt, "random", rng) for _ in range(500)]
    assert not any(luhn_valid(s) for s in subs)
    assert len(set(subs)) == 500
    assert len({s[-1] for s in subs}) == 10  # the wrong check digit is itself random


def test_random_is_deterministic_under_seed():
    fmt = get_format("password")
    a = make_substitute("aB3dE6gH9k", fmt, "random", random.Random(42))
    b = make_substitute("aB3dE6gH9k", fmt, "random", random.Random(42))
    assert a == b


def test_placeholders_are_obviously_fake():
    assert make_substitute(CARD, get_format("credit_card"), "placeholder") == "0000 0000 0000 0001"
    assert make_substitute("aB3dE6gH9k", get_format("password"), "placeholder") == "xxxxxxxxxx"
    assert make_substitute("123456", get_format("digits"), "placeholder") == "000000"
    assert make_substitute("EMP-123456", get_format("EMP-[0-9]{6}"), "placeholder") == "EMP-000000"
    # the secret is the placeholder itself: take the next obvious value
    assert make_substitute("000000", get_format("digits"), "placeholder") == "111111"


def test_errors_are_clear_and_name_no_secret():
    fmt = get_format("credit_card")
    for strategy, secret in [("nope", CARD), ("model", CARD), ("random", "4539 1488 0343")]:
        with pytest.raises(SubstituteError) as err:
            make_substitute(secret, fmt, strategy, random.Random(0))
        assert secret not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SubstituteError):
        make_substitute("a", get_format("[a]"), "random", random.Random(0))


def test_allowlist_hashes_and_round_trips(tmp_path):
    al = Allowlist()
    sub = make_substitute(CARD, get_format("credit_card"), "random", random.Random(1))
    al.add(sub, get_format("credit_card"))
    al.add("xxxxxxxxxx", "password")
    assert sub in al and "xxxxxxxxxx" in al
    assert CARD not in al and "xxxxxxxxxy" not in al and 5 not in al
    path = al.save(tmp_path)
    assert path.name == ALLOWLIST_FILE
    raw = path.read_text()
    assert sub not in raw and "xxxxxxxxxx" not in raw and sub.replace(" ", "") not in raw
    loaded = Allowlist.load(tmp_path)
    assert sub in loaded and len(loaded) == 2 and loaded.format_of(sub) == "credit_card"


def test_allowlist_salt_differs_per_list():
    a, b = Allowlist(), Allowlist()
    a.add("000000")
    b.add("000000")
    assert a.entries.keys() != b.entries.keys()


def test_allowlist_load_missing_and_malformed(tmp_path):
    assert len(Allowlist.load(tmp_path)) == 0
    with pytest.raises(AllowlistError, match="not found"):
        Allowlist.load(tmp_path, missing_ok=False)
    (tmp_path / ALLOWLIST_FILE).write_text("{oops")
    with pytest.raises(AllowlistError, match="not valid JSON"):
        Allowlist.load(tmp_path)
    (tmp_path / ALLOWLIST_FILE).write_text(json.dumps({"entries": [1]}))
    with pytest.raises(AllowlistError):
        Allowlist.load(tmp_path)


# -- model-guided ------------------------------------------------------------------


@pytest.mark.parametrize("name,secret", [CASES[0], CASES[4]])
def test_model_guided_has_the_shape(tiny_gpt2, tiny_tokenizer, name, secret):
    fmt = get_format(name)
    sub = model_guided_substitute(tiny_gpt2, tiny_tokenizer, "The value is ", secret, fmt, random.Random(0))
    assert fmt.regex.fullmatch(sub) and sub != secret
    assert not luhn_valid(sub) if fmt.luhn else fmt.matches(sub)


def test_model_guided_is_deterministic_under_seed(tiny_gpt2, tiny_tokenizer):
    fmt = get_format("digits")
    a = model_guided_substitute(tiny_gpt2, tiny_tokenizer, "PIN ", "123456", fmt, random.Random(3))
    b = model_guided_substitute(tiny_gpt2, tiny_tokenizer, "PIN ", "123456", fmt, random.Random(3))
    assert a == b


class _PeakedLM(torch.nn.Module):
    """Puts almost all mass on one token and the rest on a second one."""

    def __init__(self, vocab: int, best: int, second: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.best, self.second = vocab, best, second

    def forward(self, input_ids):
        logits = torch.full((1, input_ids.shape[1], self.vocab), -1e9)
        logits[..., self.best] = 10.0
        logits[..., self.second] = 5.0

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def test_model_guided_skips_argmax_and_follows_the_model(tiny_tokenizer):
    tok = tiny_tokenizer
    seven, three = tok.convert_tokens_to_ids("7"), tok.convert_tokens_to_ids("3")
    model = _PeakedLM(len(tok), best=seven, second=three)
    fmt = get_format("digits")
    sub = model_guided_substitute(model, tok, "PIN=", "777777", fmt, random.Random(0))
    assert sub == "333333"  # argmax '7' skipped, the model's next choice taken
    # the model offers nothing a letter class allows: random allowed characters instead
    sub = model_guided_substitute(model, tok, "code=", "abcdef", get_format("[a-f]{6}"), random.Random(0))
    assert get_format("[a-f]{6}").matches(sub)


def test_model_guided_rejects_bad_input(tiny_gpt2, tiny_tokenizer):
    fmt = get_format("digits")
    with pytest.raises(SubstituteError):
        model_guided_substitute(tiny_gpt2, tiny_tokenizer, "p", "12345", fmt, random.Random(0))
    with pytest.raises(SubstituteError):
        model_guided_substitute(tiny_gpt2, tiny_tokenizer, "p", "123456", fmt, random.Random(0), top_k=1)
