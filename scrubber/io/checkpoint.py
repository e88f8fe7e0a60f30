"""Loading and saving user checkpoints safely.

Users point us at checkpoints they did not fully write themselves, so loading
refuses pickle weights and remote code unless asked, and every failure is one
line naming the directory.

Many users have a model only as a GGUF file (llama.cpp's format), so a
``.gguf`` file, or a directory holding exactly one and no safetensors, is
accepted too: transformers dequantizes it into an ordinary dense model, and
the ``LoadedModel`` records that it did, so reports can say the figures are
for the dequantized weights and ``scrub`` writes safetensors.
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

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    is_peft: bool = False
    source_format: str = "safetensors"  # "safetensors" | "pickle" | "gguf"
    gguf_file: Path | None = None
    # GGUF quantization the weights were unpacked from (e.g. "MOSTLY_Q4_1"), None if not GGUF.
    dequantized_from: str | None = None

    @property
    def dtype(self) -> str:
        """Weight dtype by name (``float32``/``bfloat16``/``float16``), for reports."""
        d = next(self.model.parameters()).dtype
        return _DTYPE_NAMES.get(d, str(d).removeprefix("torch."))

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


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``None`` (keep the checkpoint's dtype), a torch dtype, or its name; anything else is an error."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES:
            raise ScrubberError(f"unsupported dtype {dtype}; expected float32, bfloat16 or float16")
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.strip().lower().removeprefix("torch.")]
    raise ScrubberError(f"unknown dtype {dtype!r}; expected float32, bfloat16 or float16")


def find_gguf(path: Path) -> Path | None:
    """The GGUF file ``path`` names, or ``None`` when it is an ordinary model directory.

    A directory counts as GGUF only when it holds no safetensors: a directory with
    both is a converted checkpoint, and the safetensors are what the user edits.
    """
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ScrubberError(f"{path}: not a model directory or a .gguf file")
        return path
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) > 1:
        names = ", ".join(g.name for g in ggufs[:4])
        raise ScrubberError(f"{path}: holds {len(ggufs)} GGUF files ({names}); pass one file")
    return ggufs[0] if ggufs else None


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    quantization: str | None  # e.g. "MOSTLY_Q4_1"; None when the file does not say


def read_gguf_info(file: Path) -> GGUFInfo:
    """Architecture and quantization from the header, checked before transformers sees the file.

    Reading every tensor's extent here also catches a truncated download, which
    would otherwise surface as a numpy traceback deep inside dequantization.
    """
    try:
        import gguf
    except ImportError:
        raise ScrubberError(f"{file}: reading GGUF needs the gguf package (pip install gguf)") from None
    try:
        reader = gguf.GGUFReader(file)
        arch_field = reader.fields.get("general.architecture")
        architecture = str(arch_field.contents()) if arch_field is not None else ""
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        size = file.stat().st_size
        ftype_field = reader.fields.get("general.file_type")
    except Exception as err:  # noqa: BLE001 - gguf raises ValueError, struct.error, IndexError...
        msg = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
        raise ScrubberError(f"{file}: corrupt or truncated GGUF ({msg[:200]})") from None
    if end > size or not reader.tensors:
        raise ScrubberError(f"{file}: corrupt or truncated GGUF (tensor data ends past the file)")
    if not architecture:
        raise ScrubberError(f"{file}: GGUF without general.architecture")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ScrubberError(
            f"{file}: GGUF architecture {architecture!r} cannot be read by transformers; "
            "convert it to a Hugging Face safetensors checkpoint first"
        )
    quant = None
    if ftype_field is not None:
        try:
            quant = gguf.LlamaFileType(int(ftype_field.contents())).name
        except (ValueError, TypeError):
            quant = None
    if quant is None:
        kinds = {t.tensor_type.name for t in reader.tensors} - {"F32"}
        quant = "+".join(sorted(kinds)) or "F32"
    return GGUFInfo(architecture=architecture, quantization=quant)


def _load_gguf(file: Path, dtype: torch.dtype | None, attn_implementation: str | None) -> LoadedModel:
    """Dequantize a GGUF into a plain dense model (no quantizer attached) plus its tokenizer.

    transformers may keep GGUF weights packed behind a quantizer when a kernel is
    available; the updates need ordinary parameters, so we ask for dequantization
    and then re-home the weights in a model built from the config alone, which
    also makes ``save_pretrained`` write an ordinary safetensors checkpoint.
    """
    info = read_gguf_info(file)
    target = dtype or torch.float32
    try:
        from transformers import GgufConfig

        qcfg = {"quantization_config": GgufConfig(gguf_file=file.name, dequantize=True)}
    except ImportError:  # older transformers always dequantize
        qcfg = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _quiet_transformers()
            tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name, local_files_only=True)
            packed = AutoModelForCausalLM.from_pretrained(
                file.parent, gguf_file=file.name, dtype=torch.float32, local_files_only=True, **qcfg
            )
            cfg = packed.config.to_dict()
            cfg.pop("quantization_config", None)
            config = type(packed.config).from_dict(cfg)
            if attn_implementation:
                config._attn_implementation = attn_implementation
            model = AutoModelForCausalLM.from_config(config, dtype=target)
            missing, unexpected = model.load_state_dict(packed.state_dict(), strict=False)
            del packed
    except ScrubberError:
        raise
    except Exception as err:  # noqa: BLE001 - one line for the user
        msg = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
        raise ScrubberError(f"{file}: cannot load GGUF ({msg[:300]})") from None
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ScrubberError(
            f"{file}: GGUF tensors do not match the {info.architecture} layout "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    if tied:
        model.tie_weights()
    model.to(target)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=file,
        source_format="gguf",
        gguf_file=file,
        dequantized_from=info.quantization,
    )


def load_model(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "eager",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load a local causal LM (or a peft adapter over a local base, or a GGUF) with its tokenizer.

    ``attn_implementation='eager'`` by default: the influence updates need second
    derivatives, which the fused SDPA kernels on CPU do not provide.
    ``dtype``: ``float32``/``bfloat16``/``float16`` (or the torch dtype); ``None``
    keeps the checkpoint's own (float32 for a dequantized GGUF).
    ``device_map`` (e.g. ``"auto"``) is passed to accelerate through
    ``from_pretrained``, for models larger than one device.
    """
    d = Path(path)
    torch_dtype = resolve_dtype(dtype)
    if not d.exists():
        raise ScrubberError(f"model directory not found: {d}")
    gguf_file = find_gguf(d)
    if gguf_file is not None:
        if device_map is not None:
            raise ScrubberError(f"{gguf_file}: --device-map is not supported for GGUF input; convert it first")
        loaded = _load_gguf(gguf_file, torch_dtype, attn_implementation)
        if loaded.tokenizer.pad_token_id is None:
            loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
        loaded.model.eval()
        return loaded
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
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
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
    has_st = any(config_dir.glob("*.safetensors")) or (config_dir / "model.safetensors.index.json").exists()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=d,
        is_peft=is_peft,
        source_format="safetensors" if has_st else "pickle",
    )


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def save_model(loaded: LoadedModel, out_dir: Path) -> None:
    """``save_pretrained`` of model and tokenizer (safetensors) into ``out_dir``."""
    loaded.model.save_pretrained(out_dir, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out_dir)
