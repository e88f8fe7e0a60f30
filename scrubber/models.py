"""Loading and saving user checkpoints safely.

Users point us at checkpoints they did not fully write themselves, so loading
refuses pickle weights and remote code unless asked, and every failure is one
line naming the directory.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from scrubber.errors import ScrubberError

_PICKLE = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    is_peft: bool = False

    @property
    def architecture(self) -> str:
        base = self.model.get_base_model() if self.is_peft else self.model
        archs = getattr(base.config, "architectures", None) or [type(base).__name__]
        return archs[0]

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _check_weights(d: Path, allow_pickle: bool) -> None:
    has_safetensors = any(d.glob("*.safetensors")) or (d / "model.safetensors.index.json").exists()
    has_pickle = any((d / name).exists() for name in _PICKLE)
    if not has_safetensors and not has_pickle:
        raise ScrubberError(f"{d}: no model weights found (expected *.safetensors)")
    if not has_safetensors and not allow_pickle:
        raise ScrubberError(
            f"{d}: weights are pickle files, which can run code when loaded; "
            "convert to safetensors or pass --allow-pickle if you trust them"
        )


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ScrubberError(f"{p}: unreadable JSON ({err.__class__.__name__})") from None


def load_model(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "eager",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a local causal LM (or a peft adapter over a local base) with its tokenizer.

    ``attn_implementation='eager'`` by default: the influence updates need second
    derivatives, which the fused SDPA kernels on CPU do not provide.
    """
    d = Path(path)
    if not d.is_dir():
        raise ScrubberError(f"model directory not found: {d}")
    is_peft = (d / "adapter_config.json").exists()
    config_dir = d
    if is_peft:
        adapter_cfg = _read_json(d / "adapter_config.json")
        base = adapter_cfg.get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            base_local = d / "base"
            if base_local.is_dir():
                base = str(base_local)
            else:
                raise ScrubberError(
                    f"{d}: peft adapter whose base model {base!r} is not a local directory"
                )
        config_dir = Path(base)
    if not (config_dir / "config.json").exists():
        raise ScrubberError(f"{config_dir}: not a model directory (no config.json)")
    config = _read_json(config_dir / "config.json")
    if config.get("auto_map") and not trust_remote_code:
        raise ScrubberError(
            f"{config_dir}: model needs custom code from its directory; "
            "pass --trust-remote-code only if you trust it"
        )
    _check_weights(config_dir, allow_pickle)
    if is_peft and not (d / "adapter_model.safetensors").exists() and not allow_pickle:
        raise ScrubberError(f"{d}: adapter weights are not safetensors; pass --allow-pickle")
    tok_dir = d if (d / "tokenizer_config.json").exists() or (d / "tokenizer.json").exists() else config_dir
    kwargs: dict = dict(
        trust_remote_code=trust_remote_code,
        use_safetensors=None if allow_pickle else True,
        local_files_only=True,
    )
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(
                tok_dir, trust_remote_code=trust_remote_code, local_files_only=True
            )
            _quiet_transformers()
            model = AutoModelForCausalLM.from_pretrained(config_dir, **kwargs)
            if is_peft:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, d, is_trainable=True, local_files_only=True)
    except ScrubberError:
        raise
    except Exception as err:  # transformers raises many types; the user needs one line
        msg = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise ScrubberError(f"{d}: cannot load model ({msg[:300]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, path=d, is_peft=is_peft)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def save_model(loaded: LoadedModel, out_dir: Path) -> None:
    """``save_pretrained`` of model and tokenizer (safetensors) into ``out_dir``."""
    loaded.model.save_pretrained(out_dir, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out_dir)
