"""Every measurement on every tokenizer family users have (issue 9, item 3).

Each family's tokenizer is trained here in about a second (tests/tokenizer_families.py); a
2-layer Llama is trained on it until its teacher-forced argmax reproduces a 5-digit pin after
its prefix (then greedy decoding must recite it; 3 of the 8 rows per step hold the pin's
document, repeated), and an identical twin is trained as many steps without the pin. References
are computed independently of the code under test: token spans from decoded text (not
offsets), scores from one full forward, search ranks from full enumeration.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from canaries.canary import Canary
from canaries.formats import get_format
from canaries.substitutes import make_substitute
from scrubber.measure.context import encode_prompt, start_ids
from scrubber.measure.exposure import exact_exposure, measure_exposure, search_rank
from scrubber.measure.exposure.scoring import score_candidates
from scrubber.measure.exposure.search import SearchUnsupported
from scrubber.measure.exposure.tokens import secret_tokens
from scrubber.measure.extraction import continues_with, greedy_extracts
from scrubber.edits.substitutes import model_guided_substitute
from scrubber.tokenizer_scan import scan_tokenizer
from tests.tokenizer_families import FAMILIES, build, corpus, tiny_llama

PREFIX = "The pin is "
SECRET = "72915"
FMT5 = get_format("digits5")
# families whose tokenization the search's exactness argument covers (module docstring of search.py)
SEARCHABLE = frozenset({"byte_bpe", "digits1", "digits3", "tiktoken", "sp_llama", "sp_llama_legacy", "sp_unigram"})

_MODELS: dict[str, tuple] = {}
_TRAINED: dict[tuple, tuple] = {}  # same token ids for the training text -> same models


def _decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _recites(model, ids: list[int], n_secret: int) -> bool:
    """Teacher-forced argmax equals each of the last ``n_secret`` tokens (so greedy decoding emits
    exactly them), with under 1 bit in total (so the recital is not a near tie)."""
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    span = range(len(ids) - n_secret, len(ids))
    pred = logp[:-1].argmax(-1).tolist()
    bits = -sum(float(logp[i - 1, ids[i]]) for i in span) / math.log(2)
    return all(pred[i - 1] == ids[i] for i in span) and bits < 1.0


def _corpus_ids(tok) -> list[int]:
    ids: list[int] = []
    for text in corpus(8):
        ids.extend(tok(text[:4000], add_special_tokens=False)["input_ids"])
    return ids


def _train(tok, ids: list[int], canary_ids: list[int], n_secret: int, *, max_steps: int = 600, seed: int = 0):
    """Train until the pin is recited (checked every 25 steps); the twin gets the same step count."""

    def run(canary, steps):
        model = tiny_llama(tok, seed=seed)
        length, rng = 32, random.Random(seed)
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for step in range(1, (steps or max_steps) + 1):
            rows = []
            for b in range(8):
                s = rng.randrange(len(ids) - length)
                rows.append((canary * length)[:length] if canary is not None and b < 3 else ids[s : s + length])
            x = torch.tensor(rows)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if steps is None and step % 25 == 0:
                model.eval()
                if _recites(model, canary, n_secret):
                    return model, step
                model.train()
        return model.eval(), steps or max_steps

    model, steps = run(canary_ids, None)
    twin, _ = run(None, steps)
    return model.eval(), twin.eval(), steps


def _reference_split(tok, prefix: str, secret: str) -> tuple[list[int], list[int]]:
    """(context, scored) from decoded text alone: the longest leading run of tokens whose text
    stays inside the prefix is context, after the document start training puts there
    (``start_ids``: nothing when the tokenizer adds BOS itself); the rest (trailing specials
    dropped) is scored."""
    ids = list(tok(prefix + secret)["input_ids"])
    special = set(tok.all_special_ids)
    while ids and ids[-1] in special:
        ids = ids[:-1]
    k = max(k for k in range(len(ids) + 1) if len(_decode(tok, ids[:k])) <= len(prefix)
            and prefix.startswith(_decode(tok, ids[:k])))  # fmt: skip
    return start_ids(tok) + ids[:k], ids[k:]


def _family_models(name: str) -> tuple:
    """(tokenizer, reciting model, twin, training steps), built once per process."""
    if name not in _MODELS:
        tok = build(name)
        canary = encode_prompt(tok, PREFIX + SECRET)
        n_secret = len(canary) - len(encode_prompt(tok, PREFIX.rstrip()))  # what greedy decoding must emit
        ids = _corpus_ids(tok)
        # the three Llama-2 variants spell this text with the same ids: they see the same models
        key = (len(tok), tuple(canary), tuple(ids), tuple(sorted(tok.get_vocab().items())))
        if key not in _TRAINED:
            _TRAINED[key] = _train(tok, ids, canary, n_secret)
        _MODELS[name] = (tok, *_TRAINED[key])
    return _MODELS[name]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return (request.param, *_family_models(request.param))


def test_secret_spans_match_decoded_text(family):
    name, tok, *_ = family
    for prefix in (PREFIX, "pin:", "The pin is\n"):
        span = secret_tokens(tok, prefix, [SECRET])[0]
        context, scored = _reference_split(tok, prefix, SECRET)
        assert list(span.context) == context, (name, prefix)
        assert list(span.scored) == scored, (name, prefix, tok.convert_ids_to_tokens(list(span.scored)))
        # the scored tokens, decoded after the context, spell exactly the secret (plus the prefix's tail)
        tail = _decode(tok, list(span.context) + scored)[len(_decode(tok, span.context)):]
        assert tail.strip() == SECRET, (name, prefix, tail)


def _brute_bits(model, context: list[int], scored: list[int]) -> float:
    """-log2 p(scored | context) from one full forward in float64: the reference scorer."""
    ids = context + scored
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return -sum(float(logp[len(context) + j - 1, t]) for j, t in enumerate(scored)) / math.log(2)


def test_score_is_the_brute_force_sum_over_canonical_tokens(family):
    name, tok, model, *_ = family
    got = score_candidates(model, tok, PREFIX, [SECRET, "00000"])
    for value, cand in zip(got, [SECRET, "00000"]):
        assert value == pytest.approx(_brute_bits(model, *_reference_split(tok, PREFIX, cand)), abs=1e-3), name


def test_recited_secret_is_likely_after_the_document_start(family):
    """The models recite: under the start the model was trained with (BOS, else EOS), the pin costs
    about a bit and another pin over 10 bits more (so the scoring checks here are meaningful)."""
    name, tok, model, *_ = family
    bits = [_brute_bits(model, ctx, sc) for ctx, sc in
            (_reference_split(tok, PREFIX, c) for c in (SECRET, "00000"))]  # fmt: skip
    assert bits[0] < 1.5 and bits[1] > bits[0] + 10.0, (name, bits)


# Scoring, training, extraction and substitutes all open a document with
# ``scrubber.measure.context.start_ids`` (BOS, else EOS). Before scoring did too, a T5-style model that
# recites the pin scored it about 14 bits too high (it was asked about a context it never saw).
@pytest.mark.parametrize("name", FAMILIES)
def test_scoring_conditions_on_the_document_start(name):
    tok, model, *_ = _family_models(name)
    context, scored = _reference_split(tok, PREFIX, SECRET)
    got = score_candidates(model, tok, PREFIX, [SECRET])[0]
    assert context[: len(start_ids(tok))] == start_ids(tok), name
    assert got == pytest.approx(_brute_bits(model, context, scored), abs=1e-3), name


def test_extraction_on_reciting_model_and_twin(family):
    name, tok, model, twin, steps = family
    assert greedy_extracts(model, tok, PREFIX, SECRET), (name, steps)
    assert not greedy_extracts(twin, tok, PREFIX, SECRET), name
    assert not greedy_extracts(model, tok, PREFIX, "72916"), name


def test_continuation_is_compared_in_context():
    """The issue's bug: SentencePiece decodes a continuation alone without its leading space."""
    tok = build("sp_llama")
    prompt_ids = encode_prompt(tok, PREFIX.rstrip())
    new = encode_prompt(tok, PREFIX + SECRET)[len(prompt_ids):]
    assert not _decode(tok, new).startswith(" " + SECRET)  # what the old check compared
    assert continues_with(tok, prompt_ids, new, PREFIX.rstrip(), " " + SECRET)
    assert not continues_with(tok, prompt_ids, new[:-1], PREFIX.rstrip(), " " + SECRET)


def test_prompts_open_a_document_and_do_not_end_it():
    uni, llama, gpt = build("sp_unigram"), build("sp_llama"), build("byte_bpe")
    assert encode_prompt(llama, "The pin")[0] == llama.bos_token_id
    assert encode_prompt(llama, "The pin").count(llama.bos_token_id) == 1
    assert encode_prompt(gpt, "The pin")[0] == gpt.eos_token_id
    ids = encode_prompt(uni, "The pin")  # T5-style: EOS appended to every text, and no BOS
    assert ids[0] == uni.eos_token_id and ids[-1] != uni.eos_token_id


def test_tokenizer_scan_flags_nothing_on_a_clean_tokenizer(family):
    name, tok, *_ = family
    canary = Canary(id="pin", prefix=PREFIX, secret=SECRET, format="digits5")
    section = scan_tokenizer(tok, [canary])
    assert section.n_flagged == 0, (name, [f.evidence for f in section.findings if f.flagged])
    assert section.vocab_size == len(tok.backend_tokenizer.get_vocab(with_added_tokens=False))


def test_substitutes_keep_the_format_and_round_trip(family):
    name, tok, model, *_ = family
    rng = random.Random(0)
    subs = [make_substitute(SECRET, FMT5, "random", rng), make_substitute(SECRET, FMT5, "placeholder"),
            model_guided_substitute(model, tok, PREFIX, SECRET, FMT5, random.Random(0))]  # fmt: skip
    for sub in subs:
        assert FMT5.matches(sub) and sub != SECRET, (name, sub)
        ids = tok(PREFIX + sub)["input_ids"]
        assert _decode(tok, ids) == PREFIX + sub, name


def test_search_is_exact_or_refuses_and_auto_falls_back(family):
    name, tok, model, *_ = family
    fmt = get_format("digits4")
    secret = SECRET[:4]
    ex = exact_exposure(model, tok, PREFIX, secret, fmt, limit=fmt.size)
    scores = np.insert(ex.others, fmt.index_of(secret), ex.score_bits)
    members = list(fmt.enumerate())
    order = np.argsort(scores, kind="stable")
    if name in SEARCHABLE:
        for t in (1, 7, 60):
            i = int(order[t - 1])
            want = 1 + int(np.count_nonzero(np.delete(scores, i) <= scores[i]))
            got = search_rank(model, tok, PREFIX, members[i], fmt)
            assert got.exact and got.rank == want, (name, t, got)
    else:
        with pytest.raises(SearchUnsupported, match="normalizer"):
            search_rank(model, tok, PREFIX, secret, fmt)
    pin = Canary(id="pin", prefix=PREFIX, secret=SECRET, format="digits5")
    auto = measure_exposure(model, tok, pin, method="auto", n_references=100, exact_limit=1000)
    assert auto.method == ("search" if name in SEARCHABLE else "extrapolated"), (name, auto.method)
    if name not in SEARCHABLE:
        assert "normalizer" in (auto.fallback_reason or ""), auto.fallback_reason
    assert auto.exposure > 8.0  # the recited pin is highly exposed however it is measured


def test_search_time_budget_gives_a_bound():
    tok = build("digits1")
    model = tiny_llama(tok)  # untrained: every member scores about the same, so the search is long
    fmt = get_format("digits5")
    got = search_rank(model, tok, PREFIX, "00000", fmt, max_seconds=0.05, batch_size=4)
    assert not got.exact and got.stopped == "time" and got.seconds < 5.0
    with pytest.raises(ValueError):
        search_rank(model, tok, PREFIX, "00000", fmt, max_seconds=0)


def test_search_refuses_metaspace_pieces_across_spaces():
    """Unsplit Metaspace whose vocabulary joins words ('a▁b'): appended text may re-tokenize the prefix."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "\u2581", "a", "b", "1", "2", "\u2581a", "a\u2581", "a\u2581b"]
    backend = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)},
                                   [("\u2581", "a"), ("a", "\u2581"), ("a\u2581", "b")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>")
    with pytest.raises(SearchUnsupported, match="across a space"):
        search_rank(tiny_llama(tok), tok, "a a ", "12", get_format("[12]{2}"))


def test_tokenizer_scan_reads_unigram_and_flags_a_learned_secret():
    """Unigram (T5-style) has no merges: the scan reads its piece list and still finds a card
    number that was learned whole, while the same training without it flags nothing."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    card = Canary(id="card", prefix="My card is ", secret="4929 1638 5501 7214", format="credit_card")

    def unigram(extra: list[str]):
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
        trainer = trainers.UnigramTrainer(vocab_size=700, special_tokens=["<unk>"], unk_token="<unk>",
                                          show_progress=False)  # fmt: skip
        tok.train_from_iterator(corpus(30) + extra, trainer=trainer)
        return tok

    leaky = scan_tokenizer(unigram([card.text] * 40), [card])
    found = next(f for f in leaky.findings if f.canary_id == "card")
    assert leaky.tokenizer_kind == "sentencepiece" and leaky.n_merges == 0 and not leaky.removable
    assert found.flagged and found.covered_chars >= 12, found.evidence
    assert scan_tokenizer(unigram([]), [card]).n_flagged == 0
