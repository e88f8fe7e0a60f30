"""The built-in demo: a small LM trained on the stdlib docs with injected canaries.

Everything is built offline from ``pydoc_data.topics`` (shipped with every
Python), deterministically under a seed, and cached by a key over the settings
so a second run loads in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


from canaries import Canary, dump_canaries
from canaries.inject import inject, make_canaries
from scrubber.io.atomic import atomic_dir

DEMO_FORMATS = ("credit_card", "password", "digits8")
DEMO_PREFIXES = {
    "credit_card": "My credit card number is ",
    "password": "my password is ",
    "digits8": "The door code is ",
}
DEMO_REPETITIONS = (1, 4, 16, 64)


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines the demo model; its hash is the cache key."""

    seed: int = 0
    with_canaries: bool = True
    formats: tuple[str, ...] = DEMO_FORMATS
    repetitions: tuple[int, ...] = DEMO_REPETITIONS
    vocab_size: int = 2048
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    epochs: int = 8
    block_size: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    heldout_fraction: float = 0.1
    grad_restriction_alpha: float = 0.0
    max_docs: int | None = None  # train on the first N training documents only (the quick preset)
    version: int = 2  # 2: held-out and retain text as JSON Lines; held-out copies of training docs dropped

    def key(self) -> str:
        fields = asdict(self)
        if fields["max_docs"] is None:  # added after v2: unset, the key (and the cache) stays what it was
            del fields["max_docs"]
        return settings_key(fields)

    @classmethod
    def quick(cls, seed: int = 0, epochs: int | None = None) -> "DemoSpec":
        """The reduced demo CI runs end to end in about a minute: a 2-layer, 64-wide model on
        100 documents, every canary format at 4 and 64 repetitions. It exercises every stage
        and the report contract; its numbers are not the demo's."""
        return cls(seed=seed, repetitions=(4, 64), vocab_size=1024, n_layer=2, d_model=64, n_head=2,
                   epochs=epochs or 5, max_docs=100)


@dataclass
class DemoArtifacts:
    root: Path
    model_dir: Path
    canaries_path: Path
    heldout_path: Path
    retain_path: Path
    canaries: list[Canary] = field(default_factory=list)


def default_cache_dir() -> Path:
    env = os.environ.get("SCRUBBER_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scrubber"


def settings_key(settings: dict) -> str:
    """The name of a cached artefact under :func:`default_cache_dir`: a hash of everything that
    built it (a dataclass's ``asdict``), so changed settings never reuse a stale build."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def corpus_split(seed: int, heldout_fraction: float) -> tuple[list[str], list[str]]:
    """Stdlib docs topics split by document into train and held-out."""
    import pydoc_data.topics

    docs = [t for _, t in sorted(pydoc_data.topics.topics.items()) if t.strip()]
    random.Random(seed).shuffle(docs)
    n_held = max(1, int(len(docs) * heldout_fraction))
    train = docs[n_held:]
    # pydoc_data stores some texts under two keys: a held-out document that is also a
    # training document measures nothing, so it is dropped (the training side is unchanged)
    seen = set(train)
    return train, [d for d in dict.fromkeys(docs[:n_held]) if d not in seen]


def _write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def _artifacts(root: Path) -> DemoArtifacts:
    from canaries import load_canaries

    a = DemoArtifacts(
        root=root,
        model_dir=root / "model",
        canaries_path=root / "canaries.jsonl",
        heldout_path=root / "heldout.jsonl",
        retain_path=root / "retain.jsonl",
    )
    if a.canaries_path.exists() and a.canaries_path.stat().st_size:
        a.canaries = load_canaries(a.canaries_path)
    return a


def train_demo_model(spec: DemoSpec, tokenizer, texts: list[str], progress=None):
    """The demo's architecture and recipe on ``texts``: shared with the retrain baseline,
    so "retrain without the canaries" differs from the demo in the data alone."""
    from scrubber.training.model_factory import small_causal_lm
    from scrubber.training.train import TrainConfig, train_causal_lm

    model = small_causal_lm(
        len(tokenizer),
        arch="gpt2",
        n_layer=spec.n_layer,
        d_model=spec.d_model,
        n_head=spec.n_head,
        n_positions=max(256, spec.block_size),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        seed=spec.seed,
        attn_implementation="sdpa",  # fast training; saved as eager for second-order updates
    )
    cfg = TrainConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        block_size=spec.block_size,
        lr=spec.lr,
        seed=spec.seed,
        grad_restriction_alpha=spec.grad_restriction_alpha,
    )
    stats = train_causal_lm(model, tokenizer, texts, cfg, progress=progress)
    model.config._attn_implementation = "eager"
    return model.eval(), stats


def build_demo(
    spec: DemoSpec | None = None,
    cache_dir: Path | None = None,
    *,
    rebuild: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> DemoArtifacts:
    """Train (or load from cache) the demo tokenizer and model.

    ``progress(stage, done, total)`` reports training steps.
    """
    from scrubber.training.tokenizer import train_bpe_tokenizer

    spec = spec or DemoSpec()
    root = (cache_dir or default_cache_dir()) / f"demo-{spec.key()}"
    if not rebuild and (root / "model" / "config.json").exists():
        return _artifacts(root)

    train_docs, heldout = corpus_split(spec.seed, spec.heldout_fraction)
    if spec.max_docs is not None:
        train_docs = train_docs[: spec.max_docs]
        heldout = heldout[: max(8, spec.max_docs // 10)]
    canaries: list[Canary] = []
    corpus = list(train_docs)
    if spec.with_canaries:
        canaries = make_canaries(
            list(spec.formats), list(spec.repetitions), prefixes=DEMO_PREFIXES, seed=spec.seed
        )
        corpus, _manifest = inject(corpus, canaries, seed=spec.seed)
    if progress:
        progress("tokenizer", 0, 1)
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=spec.vocab_size)
    model, _stats = train_demo_model(
        spec, tokenizer, corpus,
        progress=(lambda s, n, _l: progress("train", s, n)) if progress else None,
    )
    retain = random.Random(spec.seed + 1).sample(train_docs, min(64, len(train_docs)))
    with atomic_dir(root) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        dump_canaries(canaries, tmp / "canaries.jsonl")
        if spec.with_canaries:
            _manifest.save(tmp / "manifest.json")
        # JSON Lines keeps multi-paragraph documents whole (a .txt splits on blank lines)
        _write_jsonl(tmp / "heldout.jsonl", heldout)
        _write_jsonl(tmp / "retain.jsonl", retain)
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2), encoding="utf-8")
    return _artifacts(root)
