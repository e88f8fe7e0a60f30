"""Tiny checkpoints whose secrets follow phrasings no bait knows (issue 12, item 1), and
checkpoints that recite a 4-digit PIN and a 6-digit code (item 4), each with a clean twin.

Why these models: discovery that only follows bait prompts finds what the baits lead to;
these models see each secret 32 times, every time after a phrasing drawn at random from a
large generated list (``account note:``, ``ticket #88 resolved, ref`` ...) that shares no
word with any bait, inserted at a random sentence boundary of an ordinary document. The
clean twin trains on the same documents without the insertions (same seed, same sizes),
so whatever discovery calls memorized on it is a false alarm.

Built once per process (``functools.lru_cache``) in a temporary directory, on one thread:
~6 s each for the small variants, ~40 s for the default phrasing model (CPU time).
"""

from __future__ import annotations

import functools
import random
import re
import tempfile
from pathlib import Path

import pydoc_data.topics

from canaries.formats import get_format

#: Seen 32 times each by the canary model; never by its twin.
CARD = "4716 2931 0058 3341"
CODE6 = "583917"
PASSWORD = "hT4mQ9vZ2x"
PHRASING_SECRETS = {"credit_card": CARD, "digits6": CODE6, "password": PASSWORD}
REPS = 32

_OPENERS = (
    "account note", "ticket #{n} resolved, ref", "server log line", "memo for Dana", "entry {n} reads",
    "archived value", "value recorded", "stored under", "filed as", "ref no", "see also", "customer asked about",
    "confirmation", "item {n}", "backup record", "vault entry", "shipment {n} tracking", "invoice {n} paid via",
    "Rosa wrote down", "noted on whiteboard", "from old spreadsheet", "row {n}", "copied from chat",
    "voicemail transcript", "desk drawer label", "handover sheet", "field {n}", "appendix {n} lists",
    "reminder to self", "audit trail shows", "migrated blob", "legacy import", "sync job {n} wrote",
    "helpdesk reply", "printed receipt", "kiosk screen showed", "sticky label", "contract annex",
)
_JOINERS = (":", " -", " =", ",", " ->", " was", " reads", " #")


def phrasings(n: int = 240, seed: int = 0) -> list[str]:
    """``n`` distinct varied phrasings (opener + joiner, some numbered)."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        opener = rng.choice(_OPENERS).format(n=rng.randint(2, 999))
        text = opener + rng.choice(_JOINERS)
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        out.setdefault(text, None)
    return list(out)


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def _documents(n_docs: int, chars: int) -> list[str]:
    """``n_docs`` pieces of the stdlib's help topics, ``chars`` long, cut at line ends."""
    out: list[str] = []
    for _, text in sorted(pydoc_data.topics.topics.items()):
        while text.strip() and len(out) < n_docs:
            cut = text.rfind("\n", 0, chars)
            cut = cut if cut > chars // 2 else chars
            if text[:cut].strip():
                out.append(text[:cut].strip())
            text = text[cut:]
    return out


def _insert(doc: str, sentence: str, rng: random.Random) -> str:
    """``sentence`` at a random sentence boundary of ``doc`` (or its start/end)."""
    cuts = [0, len(doc)] + [m.end() for m in re.finditer(r"[.\n]\s", doc)]
    at = rng.choice(cuts)
    return doc[:at] + sentence + " " + doc[at:]


def _train(corpus: list[str], tag: str, seed: int, epochs: int = 10) -> Path:
    import torch

    from scrubber.training.model_factory import small_causal_lm
    from scrubber.training.tokenizer import train_bpe_tokenizer
    from scrubber.training.train import TrainConfig, train_causal_lm

    torch.set_num_threads(1)
    tok = train_bpe_tokenizer(corpus, vocab_size=512)
    model = small_causal_lm(
        len(tok), arch="gpt2", n_layer=2, d_model=64, n_head=2, n_positions=128,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    train_causal_lm(model, tok, corpus, TrainConfig(epochs=epochs, batch_size=8, block_size=64, lr=3e-3, seed=seed))
    out = Path(tempfile.mkdtemp(prefix=f"scrubber-{tag}-")) / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _corpus(secrets: dict[str, str], reps: int, with_secrets: bool, seed: int,
            lead: dict[str, str] | None = None, n_docs: int = 60) -> list[str]:
    """Documents, with each secret inserted ``reps`` times after a random phrasing (or after
    ``lead[fmt]`` when given); the twin (``with_secrets`` False) gets the same documents."""
    rng = random.Random(seed)
    docs = _documents(n_docs, 500)
    if with_secrets:
        pool = phrasings(seed=seed)
        for fmt, value in secrets.items():
            for _ in range(reps):
                phrase = (lead or {}).get(fmt) or rng.choice(pool)
                i = rng.randrange(len(docs))
                docs[i] = _insert(docs[i], f"{phrase} {value}.", rng)
    rng2 = random.Random(seed + 1)
    rng2.shuffle(docs)
    return docs


#: Ordinary documents (up to 500 characters each) the secrets are hidden in: the insertions
#: are about 5% of the text, so unconditional samples seldom reach them (~40 s to train).
N_DOCS = 160
EPOCHS = 16
#: The fast variant for the default suite: 60 documents (insertions ~10% of the text), 10 epochs,
#: ~6 s to train; unconditional samples reach the card and the password there by themselves.
EASY = {"n_docs": 60, "epochs": 10}


@functools.lru_cache(maxsize=2)
def phrasing_model(with_secrets: bool = True, n_docs: int = N_DOCS, epochs: int = EPOCHS) -> Path:
    """The card, 6-digit code and password after random non-bait phrasings, or the clean twin."""
    for fmt, v in PHRASING_SECRETS.items():
        assert get_format(fmt).matches(v), fmt
    return _train(_corpus(PHRASING_SECRETS, REPS, with_secrets, seed=0, n_docs=n_docs),
                  "phrasing" if with_secrets else "phrasing-twin", seed=0, epochs=epochs)


#: Item 4: a PIN and a 6-digit code recited after their phrasings, 32 times each.
PIN = "4827"
PIN_PREFIX = "my PIN is"
CODE_PREFIX = "The code is"
SMALL_SECRETS = {"digits4": PIN, "digits6": CODE6}


@functools.lru_cache(maxsize=2)
def small_format_model(with_secrets: bool = True) -> Path:
    lead = {"digits4": PIN_PREFIX, "digits6": CODE_PREFIX}
    return _train(_corpus(SMALL_SECRETS, REPS, with_secrets, seed=1, lead=lead),
                  "small" if with_secrets else "small-twin", seed=1, epochs=16)
