"""The three model sizes of the scan curves, as checkpoint directories on disk.

* ``demo``: the built-in demo (1.1M parameters; cached by :func:`scrubber.demo.build.build_demo`).
* ``10m``: a GPT-2 of 6 layers x 384 wide with the demo's 2048-token tokenizer, **random
  init** (not trained). For the fixed-work settings this benchmark uses (fixed reference
  counts, extrapolated exposure, no early stops) a random model does exactly the same
  arithmetic as a trained one of the same shape, and building it takes a second instead
  of an hour on this CPU. Cached next to the demo under a key over its shape.
* ``smollm2``: SmolLM2-135M-Instruct converted from the GGUF wheel (float32, cached).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from scrubber.demo.build import build_demo, default_cache_dir, settings_key

MODEL_NAMES: tuple[str, ...] = ("demo", "10m", "smollm2")


@dataclass(frozen=True)
class RandomSpec:
    n_layer: int = 6
    d_model: int = 384
    n_head: int = 6
    n_positions: int = 512
    seed: int = 0

    def key(self, tokenizer_from: str) -> str:
        return settings_key(asdict(self) | {"tokenizer": tokenizer_from})


def demo_dir() -> Path:
    return build_demo().model_dir


def random_model_dir(spec: RandomSpec = RandomSpec(), cache_dir: Path | None = None) -> Path:
    """A randomly initialised GPT-2 of ``spec``'s shape with the demo tokenizer, saved once."""
    from transformers import AutoTokenizer

    from scrubber.io.atomic import atomic_dir
    from scrubber.training.model_factory import small_causal_lm

    tok_dir = demo_dir()
    root = (cache_dir or default_cache_dir()) / f"scaling-random-{spec.key(tok_dir.parent.name)}"
    if (root / "config.json").exists():
        return root
    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    model = small_causal_lm(
        len(tok), arch="gpt2", n_layer=spec.n_layer, d_model=spec.d_model, n_head=spec.n_head,
        n_positions=spec.n_positions, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, seed=spec.seed,
    )
    with atomic_dir(root) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return root


def model_dir(name: str) -> Path:
    if name == "demo":
        return demo_dir()
    if name == "10m":
        return random_model_dir()
    if name == "smollm2":
        from eval.models.smollm2 import smollm2_dir

        return smollm2_dir()
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}")
