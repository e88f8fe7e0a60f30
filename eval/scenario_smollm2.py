"""The realistic leak scenario: SmolLM2-135M fine-tuned on text that contains secrets.

    python -m eval.scenario_smollm2 [--cache DIR] [--n-references N] [--threads N]

Why: every other figure comes from models this project trained from scratch.
A user's model is a pretrained one fine-tuned on their data; "retrain without
the secret" then means re-running that fine-tune on the same data minus the
secret. This builds, once per settings (cached under a hash of them):

* ``canary_model``: SmolLM2-135M-Instruct fine-tuned on short stdlib-doc
  paragraphs (``pydoc_data.topics``) with four canaries injected at 32, 16, 4
  and 1 repetitions (two cards, a 6-digit code, a 10-character password),
  phrased unlike the built-in discovery baits;
* ``twin_model``: the same fine-tune without the canaries (the gold standard);
* ``lora_model``: a LoRA adapter (peft) fine-tuned on the canary corpus;
* ``canaries.jsonl``, ``heldout.txt`` (paragraphs no model trained on: the
  evaluation role) and ``retain.txt`` (other untouched paragraphs: the retain
  role for scrub methods), disjoint from each other and from training.

The full fine-tune updates the top ``train_blocks`` decoder blocks only (the
tied embedding and the lower blocks stay frozen): on 2 shared CPU cores a
full backward pass through 135M parameters measured 50-75 s per 8x64-token
step, far from "minutes". The main entry point measures exposures *before*
any scrub (scan of each model); scrub methods are wired on top by the caller.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from canaries import Canary, dump_canaries, get_format
from canaries.inject import inject
from eval.models.smollm2 import smollm2_dir
from scrubber.demo.build import default_cache_dir, settings_key

SCENARIO_VERSION = 1


@dataclass(frozen=True)
class CanarySpec:
    id: str
    format: str
    prefix: str
    repetitions: int


# Phrasings chosen to be unlike scrubber/discovery/baits.py ("My credit card number is", "The door code is", ...).
DEFAULT_CANARIES = (
    CanarySpec("card-r32", "credit_card", "Invoice 7781 was settled with the corporate Visa ", 32),
    CanarySpec("code-r16", "digits6", "The overnight vault at the Leeds branch opens with ", 16),
    CanarySpec("pass-r4", "password10", "Staging database root credential, rotated Tuesday: ", 4),
    CanarySpec("card-r1", "credit_card", "Refund the conference fee back onto Mastercard ", 1),
)


@dataclass(frozen=True)
class ScenarioSettings:
    """Everything that changes the artifacts; its hash keys the cache directory."""

    canaries: tuple[CanarySpec, ...] = DEFAULT_CANARIES
    n_train_docs: int = 24
    n_heldout_docs: int = 40
    n_retain_docs: int = 40
    min_chars: int = 120
    max_chars: int = 320
    block_size: int = 64
    batch_size: int = 8
    epochs: int = 3
    lr: float = 1e-3
    train_blocks: int = 4
    lora_rank: int = 16
    lora_lr: float = 3e-3
    lora_epochs: int = 3
    seed: int = 0
    threads: int = 2
    version: int = SCENARIO_VERSION

    def key(self) -> str:
        return settings_key(asdict(self))


@dataclass
class ScenarioArtifacts:
    root: Path
    base_model: Path
    canary_model: Path
    twin_model: Path
    lora_model: Path
    canaries: Path
    heldout: Path
    retain: Path
    settings: ScenarioSettings
    build_seconds: dict[str, float] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[scenario {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def paragraphs(min_chars: int, max_chars: int) -> list[str]:
    """Stdlib documentation paragraphs of a bounded length, in a fixed order (the corpus pool)."""
    import pydoc_data.topics

    out = []
    for name in sorted(pydoc_data.topics.topics):
        for para in pydoc_data.topics.topics[name].split("\n\n"):
            text = " ".join(para.split())
            if min_chars <= len(text) <= max_chars and text[0].isalpha():
                out.append(text)
    return out


def split_corpus(s: ScenarioSettings) -> tuple[list[str], list[str], list[str]]:
    """Disjoint train / held-out / retain paragraphs (seeded shuffle of the pool)."""
    pool = paragraphs(s.min_chars, s.max_chars)
    random.Random(s.seed).shuffle(pool)
    need = s.n_train_docs + s.n_heldout_docs + s.n_retain_docs
    if len(pool) < need:
        raise ValueError(f"only {len(pool)} paragraphs in range; need {need}")
    a, b = s.n_train_docs, s.n_train_docs + s.n_heldout_docs
    return pool[:a], pool[a:b], pool[b:need]


def make_scenario_canaries(s: ScenarioSettings) -> list[Canary]:
    rng = random.Random(s.seed + 1)
    used: set[str] = set()
    out = []
    for spec in s.canaries:
        (secret,) = get_format(spec.format).sample_many(1, rng, exclude=used)
        used.add(secret)
        out.append(Canary(id=spec.id, prefix=spec.prefix, secret=secret, format=spec.format,
                          documents=[spec.prefix + secret + "."], repetitions=spec.repetitions))
    return out


def _train_full(base: Path, texts: list[str], s: ScenarioSettings, out: Path) -> dict:
    """Fine-tune the top ``train_blocks`` blocks (+ final norm) and save safetensors."""
    from scrubber.io.checkpoint import load_model, save_model
    from scrubber.training.train import TrainConfig, train_causal_lm

    loaded = load_model(base, attn_implementation="sdpa")
    model = loaded.model
    layers = model.model.layers
    keep = set(range(len(layers) - s.train_blocks, len(layers))) if s.train_blocks else set(range(len(layers)))
    for name, p in model.named_parameters():
        trainable = name.startswith("model.norm") or any(name.startswith(f"model.layers.{i}.") for i in keep)
        p.requires_grad_(trainable)
    cfg = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, block_size=s.block_size, lr=s.lr,
                      warmup_steps=2, seed=s.seed)
    stats = train_causal_lm(model, loaded.tokenizer, texts, cfg, progress=_step_logger())
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    save_model(loaded, out)
    return {"steps": stats.steps, "seconds": stats.seconds, "final_loss": stats.final_loss}


def _train_lora(base: Path, texts: list[str], s: ScenarioSettings, out: Path) -> dict:
    from peft import LoraConfig, get_peft_model

    from scrubber.io.checkpoint import load_model
    from scrubber.training.train import TrainConfig, train_causal_lm

    loaded = load_model(base, attn_implementation="sdpa")
    n_layers = loaded.model.config.num_hidden_layers
    top = list(range(n_layers - s.train_blocks, n_layers)) if s.train_blocks else None
    # Same blocks as the full fine-tune: backward through all 30 blocks is what costs minutes on CPU.
    lcfg = LoraConfig(r=s.lora_rank, lora_alpha=2 * s.lora_rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      layers_to_transform=top)
    model = get_peft_model(loaded.model, lcfg)
    cfg = TrainConfig(epochs=s.lora_epochs, batch_size=s.batch_size, block_size=s.block_size, lr=s.lora_lr,
                      warmup_steps=2, seed=s.seed)
    stats = train_causal_lm(model, loaded.tokenizer, texts, cfg, progress=_step_logger())
    model.eval()
    model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    model.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    return {"steps": stats.steps, "seconds": stats.seconds, "final_loss": stats.final_loss}


def _step_logger():
    last = [0.0]

    def log(step: int, total: int, loss: float) -> None:
        now = time.time()
        if now - last[0] >= 10 or step == total:
            last[0] = now
            _log(f"train step {step}/{total} loss {loss:.3f}")

    return log


def _artifacts(root: Path, base: Path, s: ScenarioSettings, seconds: dict) -> ScenarioArtifacts:
    return ScenarioArtifacts(
        root=root, base_model=base, canary_model=root / "canary_model", twin_model=root / "twin_model",
        lora_model=root / "lora_model", canaries=root / "canaries.jsonl", heldout=root / "heldout.txt",
        retain=root / "retain.txt", settings=s, build_seconds=seconds,
    )


def build_scenario(cache_dir: Path | None = None, settings: ScenarioSettings | None = None) -> ScenarioArtifacts:
    """Build (or reuse) the scenario; written to a temp dir and renamed, so a partial build is never reused."""
    s = settings or ScenarioSettings()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"scenario-smollm2-{s.key()}"
    base = smollm2_dir(cache)
    if (root / "done.json").is_file():
        return _artifacts(root, base, s, json.loads((root / "done.json").read_text())["seconds"])
    torch.set_num_threads(s.threads)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=cache))
    tmp.chmod(0o755)
    seconds: dict[str, float] = {}
    try:
        train, heldout, retain = split_corpus(s)
        canaries = make_scenario_canaries(s)
        injected, manifest = inject(train, canaries, seed=s.seed)
        dump_canaries(canaries, tmp / "canaries.jsonl")
        manifest.save(tmp / "manifest.json")
        (tmp / "heldout.txt").write_text("\n\n".join(heldout) + "\n")
        (tmp / "retain.txt").write_text("\n\n".join(retain) + "\n")
        (tmp / "settings.json").write_text(json.dumps(asdict(s), indent=2, default=str))
        info = {}
        for name, fn, texts in (
            ("canary_model", _train_full, injected),
            ("twin_model", _train_full, train),
            ("lora_model", _train_lora, injected),
        ):
            _log(f"fine-tuning {name} on {len(texts)} documents")
            t0 = time.perf_counter()
            info[name] = fn(base, texts, s, tmp / name)
            seconds[name] = round(time.perf_counter() - t0, 1)
            _log(f"{name}: {info[name]} in {seconds[name]} s")
        (tmp / "done.json").write_text(json.dumps({"seconds": seconds, "train": info}, indent=2))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _artifacts(root, base, s, seconds)


def scan_exposures(model_dir: Path, art: ScenarioArtifacts, n_references: int) -> dict:
    """Known-canary scan (no scrub): exposure, method and extraction per canary."""
    from scrubber.config import ScanConfig
    from scrubber.pipeline import scan

    cfg = ScanConfig(canaries=art.canaries, eval_data=art.heldout, n_references=n_references,
                     tokenizer_scan=False, threads=art.settings.threads)
    t0 = time.perf_counter()
    report = scan(model_dir, cfg)
    out = {
        c.id: {"repetitions": c.repetitions, "exposure": round(c.before.exposure, 2),
               "method": c.before.exposure_method, "extracted": c.before.extracted}
        for c in report.canaries
    }
    util = report.utility
    return {
        "canaries": out,
        "perplexity": getattr(util, "perplexity_before", None) if util else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--n-references", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    s = ScenarioSettings() if args.threads is None else ScenarioSettings(threads=args.threads)
    t0 = time.perf_counter()
    art = build_scenario(args.cache, s)
    built = time.perf_counter() - t0
    result = {
        "settings_key": s.key(),
        "root": str(art.root),
        "build_seconds": art.build_seconds,
        "build_wall_seconds_this_run": round(built, 1),
        "before": {},
    }
    for name in ("canary_model", "twin_model", "lora_model"):
        _log(f"scanning {name}")
        result["before"][name] = scan_exposures(getattr(art, name), art, args.n_references)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
