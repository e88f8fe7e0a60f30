"""The Secret Sharer audit on a team's own setup: inject canaries, fine-tune, measure.

``scrubber canaries inject`` writes a copy of the dataset with canaries inserted
at chosen repetition counts, the manifest of where they went and the canary
file; ``scrubber train`` does that, fine-tunes the given checkpoint on the
result (:func:`scrubber.training.train.train_causal_lm`) and writes the exposure
report of the trained model, so the audit can run as a CI step with
``--fail-above``.

Datasets are a saved ``datasets`` directory (``save_to_disk``; for a
``DatasetDict`` the ``train`` split gets the canaries), JSON Lines with a text
field, or plain text with documents separated by blank lines; the injected copy
is written in the same form. The canary file holds the canaries' secrets raw
(they are synthetic, but whoever reads them can fake an audit): it and the
manifest (it lists the canary documents) are created with mode 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from canaries import Canary, CanaryFileError, load_canaries
from canaries.formats import FormatError, get_format
from canaries.inject import InjectError, Manifest, inject, make_canaries
from scrubber.io.atomic import atomic_dir, check_output_dir
from scrubber.config import ScanConfig, _Options
from scrubber.io.data import pick_split, read_jsonl_records, read_plain_documents, read_saved_dataset
from scrubber.errors import ScrubberError
from scrubber.progress import Progress, Silent

DEFAULT_CANARY_FORMATS = ["credit_card", "password", "digits8"]
DEFAULT_REPETITIONS = [1, 4, 16, 64]


def _split_list(v: Any) -> Any:
    """``"1,4,16"`` or ``["1,4", "16"]`` -> ``["1", "4", "16"]`` (flags and YAML alike)."""
    if isinstance(v, str):
        v = [v]
    if isinstance(v, list):
        out: list[Any] = []
        for item in v:
            out += [s.strip() for s in item.split(",") if s.strip()] if isinstance(item, str) else [item]
        return out
    return v


class _InjectOptions(_Options):
    data: Path | None = None
    text_field: str = "text"
    canary_formats: list[str] = Field(default_factory=lambda: list(DEFAULT_CANARY_FORMATS))
    repetitions: list[int] = Field(default_factory=lambda: list(DEFAULT_REPETITIONS))
    canaries: Path | None = None
    """Inject these canaries (their ``repetitions``) instead of making new ones."""
    mode: Literal["insert", "append"] = "insert"
    seed: int = 0
    force: bool = False

    @field_validator("canary_formats", mode="before")
    @classmethod
    def _fmts(cls, v: Any) -> Any:
        v = _split_list(v)
        for name in v or []:
            get_format(name)  # FormatError (ValueError): one line
        return v

    @field_validator("repetitions", mode="before")
    @classmethod
    def _reps(cls, v: Any) -> Any:
        v = _split_list(v)
        try:
            reps = [int(x) for x in v]
        except (TypeError, ValueError):
            raise ValueError("repetitions must be integers, e.g. 1,4,16") from None
        if not reps or any(r < 0 for r in reps):
            raise ValueError("repetitions must be non-negative integers, e.g. 1,4,16")
        return reps


class InjectConfig(_InjectOptions):
    out: Path | None = None


class TrainAuditConfig(ScanConfig, _InjectOptions):
    model: Path | None = None
    out: Path | None = None
    canaries_out: Path | None = None
    """Where the canary file goes (default OUT/canaries.jsonl)."""
    epochs: int = Field(3, ge=1)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    block_size: int = Field(128, ge=8)
    warmup_steps: int = Field(10, ge=0)


# -- datasets ---------------------------------------------------------------------------


@dataclass
class Corpus:
    kind: Literal["dataset", "dataset_dict", "jsonl", "text"]
    data: Any
    """A Dataset (dataset/jsonl), a DatasetDict, or a list of strings (text)."""
    split: str | None = None

    def target(self):
        return self.data[self.split] if self.kind == "dataset_dict" else self.data

    def texts(self, text_field: str) -> list[str]:
        t = self.target()
        texts = list(t) if self.kind == "text" else list(t[text_field])
        return [x for x in texts if isinstance(x, str) and x.strip()]


def load_corpus(path: Path, text_field: str = "text") -> Corpus:
    p = Path(path)
    if p.is_dir():
        from datasets import DatasetDict

        ds = read_saved_dataset(p)
        if isinstance(ds, DatasetDict):
            corpus = Corpus("dataset_dict", ds, pick_split(ds, ("train",)))
        else:
            corpus = Corpus("dataset", ds)
        if text_field not in corpus.target().column_names:
            raise ScrubberError(f"{p}: dataset has no {text_field!r} column")
        return corpus
    if not p.is_file():
        raise ScrubberError(f"data not found: {p}")
    if p.suffix in (".jsonl", ".json"):
        from datasets import Dataset

        records = read_jsonl_records(p, text_field)
        if not records:
            raise ScrubberError(f"{p}: no records")
        return Corpus("jsonl", Dataset.from_list(records))
    texts = read_plain_documents(p)
    if not texts:
        raise ScrubberError(f"{p}: no text found")
    return Corpus("text", texts)


def save_corpus(corpus: Corpus, out_dir: Path) -> Path:
    if corpus.kind in ("dataset", "dataset_dict"):
        path = out_dir / "data"
        corpus.data.save_to_disk(str(path))
    elif corpus.kind == "jsonl":
        path = out_dir / "data.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for rec in corpus.data:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    else:
        path = out_dir / "data.txt"
        path.write_text("\n\n".join(corpus.data) + "\n", encoding="utf-8")
    return path


def save_manifest_private(manifest: Manifest, path: Path) -> Path:
    """The manifest lists the canary documents (raw secrets): mode 0600 like the canary file."""
    manifest.save(path)
    os.chmod(path, 0o600)
    return path


def write_canaries_private(canaries: list[Canary], path: Path) -> Path:
    """The canary file (full records, raw secrets), mode 0600, written atomically."""
    from scrubber.discovery.scan import write_canary_file

    return write_canary_file(canaries, path, full=True)


# -- inject -----------------------------------------------------------------------------


@dataclass
class Injected:
    corpus: Corpus
    canaries: list[Canary]
    manifest: Manifest


def inject_into(corpus: Corpus, cfg: _InjectOptions) -> Injected:
    if cfg.canaries is not None:
        try:
            canaries = load_canaries(cfg.canaries)
        except CanaryFileError as err:
            raise ScrubberError(str(err)) from None
    else:
        canaries = make_canaries(cfg.canary_formats, cfg.repetitions, seed=cfg.seed)
    try:
        new, manifest = inject(corpus.target(), canaries, seed=cfg.seed, text_field=cfg.text_field, mode=cfg.mode)
    except (InjectError, FormatError) as err:
        raise ScrubberError(str(err)) from None
    if corpus.kind == "dataset_dict":
        data = corpus.data.copy()
        data[corpus.split] = new
        out = Corpus(corpus.kind, type(corpus.data)(data), corpus.split)
    else:
        out = Corpus(corpus.kind, new, corpus.split)
    return Injected(out, canaries, manifest)


def run_inject(cfg: InjectConfig) -> dict[str, Path]:
    if cfg.data is None:
        raise ScrubberError("canaries inject needs --data DATASET")
    if cfg.out is None:
        raise ScrubberError("canaries inject needs --out DIR")
    check_output_dir(cfg.out, inputs=(cfg.data,), force=cfg.force)
    injected = inject_into(load_corpus(cfg.data, cfg.text_field), cfg)
    with atomic_dir(cfg.out) as tmp:
        data = save_corpus(injected.corpus, tmp)
        save_manifest_private(injected.manifest, tmp / "manifest.json")
        write_canaries_private(injected.canaries, tmp / "canaries.jsonl")
    out = Path(cfg.out)
    return {"data": out / data.name, "manifest": out / "manifest.json", "canaries": out / "canaries.jsonl"}


# -- train ------------------------------------------------------------------------------


def _load_trainable(model_dir: Path, cfg: TrainAuditConfig):
    """A checkpoint to fine-tune, or (config.json + tokenizer, no weights) a model to
    train from scratch, initialised under ``cfg.seed``."""
    from scrubber.io.checkpoint import LoadedModel, load_model

    d = Path(model_dir)
    has_weights = d.is_dir() and (any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin")))
    if has_weights or not (d / "config.json").is_file():
        return load_model(d, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(d, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except Exception as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ScrubberError(f"{d}: cannot build a model from its config ({msg[:200]})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model=model, tokenizer=tok, path=d)


def run_train(cfg: TrainAuditConfig, progress: Progress | None = None):
    """Inject, fine-tune (on CPU: the training loop is the demo's), save under
    ``cfg.out``, and measure on ``cfg.device``: returns the scan report."""
    from scrubber import pipeline
    from scrubber.training.train import TrainConfig, train_causal_lm

    progress = progress or Silent()
    if cfg.model is None:
        raise ScrubberError("train needs a model directory")
    if cfg.data is None:
        raise ScrubberError("train needs --data DATASET")
    if cfg.out is None:
        raise ScrubberError("train needs --out DIR")
    out = Path(cfg.out)
    check_output_dir(out, inputs=(Path(cfg.model), Path(cfg.data)), force=cfg.force)
    canaries_out = Path(cfg.canaries_out) if cfg.canaries_out else out / "canaries.jsonl"
    if canaries_out.is_dir():
        raise ScrubberError(f"--canaries-out {canaries_out}: is a directory")
    if cfg.eval_data is not None:
        from scrubber.io.data import load_texts

        load_texts(cfg.eval_data)  # fail on bad eval data before training
    injected = inject_into(load_corpus(cfg.data, cfg.text_field), cfg)
    loaded = _load_trainable(Path(cfg.model), cfg)
    texts = injected.corpus.texts(cfg.text_field)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, block_size=cfg.block_size,
                       lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed)
    with progress.stage("fine-tuning with canaries") as advance:
        try:
            train_causal_lm(loaded.model, loaded.tokenizer, texts, tcfg,
                            progress=lambda s, n, _l: advance(s, n))
        except ValueError as err:
            raise ScrubberError(str(err)) from None
    loaded.model.eval()
    with atomic_dir(out) as tmp:
        loaded.model.save_pretrained(tmp / "model", safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp / "model")
        save_manifest_private(injected.manifest, tmp / "manifest.json")
        if canaries_out.resolve().parent == out.resolve():
            write_canaries_private(injected.canaries, tmp / canaries_out.name)
    if canaries_out.resolve().parent != out.resolve():
        write_canaries_private(injected.canaries, canaries_out)
    scan_cfg = cfg.model_copy(update={"canaries": canaries_out})
    report = pipeline.scan(out / "model", scan_cfg, progress, canaries=injected.canaries)
    return report
