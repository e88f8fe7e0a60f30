"""Which parameters an influence update may change, and flat vectors over them.

Every update in this package (first order, second order, IAU, K-FAC) works on
one flat vector over a chosen set of tensors. `select_parameters` turns a
short spec into that set, the same way for GPT-2, Llama/Mistral, GPT-NeoX and
OPT, bare or wrapped by peft:

    mlp, attn, norm, lm_head, embeddings, all, lora     presets
    -2:   0   1:3   ::2                                 blocks, Python slice syntax
    -2:/mlp   0/attn/lora                               '/' intersects selectors
    re:mlp\\.c_fc                                        regex (re.search) over names
    *.mlp.c_proj.weight                                 glob (fnmatch) over names

A string spec may list items separated by commas (`"mlp,lm_head"`); the
result is their union, in the model's parameter order. Tied tensors (GPT-2's
lm_head is the input embedding) are selected once, under their first name.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

PRESETS = ("mlp", "attn", "norm", "lm_head", "embeddings", "all", "lora")

# First path segment, relative to a block, of its MLP / attention submodules.
_MLP_NAMES = frozenset({"mlp", "feed_forward", "ffn", "fc1", "fc2", "block_sparse_moe", "moe", "ff"})
_ATTN_NAMES = frozenset({"attn", "self_attn", "attention", "self_attention", "attn_layer"})
# Block lists of the architectures we name; others fall back to the largest ModuleList.
_KNOWN_BLOCK_LISTS = (
    "transformer.h",
    "model.layers",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
    "transformer.blocks",
    "model.language_model.layers",
)
_BLOCK_RANGE = re.compile(r"^-?\d+$|^-?\d*:-?\d*(:-?\d*)?$")
_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class ParameterSelection:
    """An ordered set of a model's tensors and the flat-vector view of them.

    Vectors are laid out as the concatenation of each tensor's row-major
    flattening, in `names` order; their dtype is the promoted dtype of the
    tensors and they live on the first tensor's device.
    """

    model: nn.Module
    names: list[str]
    params: list[nn.Parameter]
    aliases: dict[str, list[str]] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def shapes(self) -> list[torch.Size]:
        return [p.shape for p in self.params]

    @property
    def dtype(self) -> torch.dtype:
        dtype = self.params[0].dtype
        for p in self.params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        return dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def __len__(self) -> int:
        return len(self.params)

    def describe(self) -> str:
        """One line for reports: how much the update may change."""
        return f"{len(self.params)} tensors, {self.numel:,} parameters"

    def flatten(self, tensors: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Concatenate per-tensor values (default: the current weights); None counts as zeros."""
        if tensors is None:
            tensors = [p.detach() for p in self.params]
        if len(tensors) != len(self.params):
            raise ValueError(f"expected {len(self.params)} tensors, got {len(tensors)}")
        parts = []
        for t, p in zip(tensors, self.params):
            if t is None:
                parts.append(torch.zeros(p.numel(), dtype=self.dtype, device=self.device))
            else:
                if t.shape != p.shape:
                    raise ValueError(f"shape {tuple(t.shape)} does not match parameter {tuple(p.shape)}")
                parts.append(t.reshape(-1).to(dtype=self.dtype, device=self.device))
        return torch.cat(parts)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into tensors shaped (and typed) like the parameters."""
        if vector.dim() != 1 or vector.numel() != self.numel:
            raise ValueError(f"expected a flat vector of {self.numel} values, got shape {tuple(vector.shape)}")
        out, offset = [], 0
        for p in self.params:
            n = p.numel()
            out.append(vector[offset : offset + n].view(p.shape).to(dtype=p.dtype, device=p.device))
            offset += n
        return out

    def named_tensors(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.unflatten(vector)))

    def values(self) -> torch.Tensor:
        """The current weights as one detached vector (a copy)."""
        return self.flatten().clone()

    @torch.no_grad()
    def set_(self, vector: torch.Tensor) -> None:
        for p, t in zip(self.params, self.unflatten(vector)):
            p.copy_(t)

    @torch.no_grad()
    def add_(self, vector: torch.Tensor, alpha: float = 1.0) -> None:
        """θ ← θ + alpha·vector, in place: how updates are applied."""
        for p, t in zip(self.params, self.unflatten(vector)):
            p.add_(t, alpha=alpha)

    def gradient(self, loss: torch.Tensor, *, create_graph: bool = False, retain_graph: bool | None = None) -> torch.Tensor:
        """∇loss over the selection as a flat vector (zeros where the loss does not depend on a tensor)."""
        grads = torch.autograd.grad(
            loss, self.params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
        )
        return self.flatten(list(grads))

    @contextmanager
    def requires_grad_only(self) -> Iterator["ParameterSelection"]:
        """Let autograd track the selection and nothing else, then restore every flag.

        Saves the memory and time of gradients nobody asked for, and makes peft's
        frozen base weights differentiable when they are what we update.
        """
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            for p in self.params:
                p.requires_grad_(True)
            yield self
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)


# ----------------------------------------------------------------------------- model structure


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's own list of transformer blocks and its dotted name.

    Known layouts are matched by name (also under peft's `base_model.model.`
    prefix); otherwise the ModuleList holding the most parameters is taken.
    """
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    for suffix in _KNOWN_BLOCK_LISTS:
        for name, mod in lists:
            if name == suffix or name.endswith("." + suffix):
                return name, mod
    if not lists:
        raise ValueError(f"cannot find the transformer block list of {type(model).__name__}")
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


def _block_of(name: str, blocks_prefix: str) -> tuple[int, str] | None:
    """(block index, path inside the block) for a parameter name, or None outside the blocks."""
    head = blocks_prefix + "."
    if not name.startswith(head):
        return None
    idx, _, rest = name[len(head) :].partition(".")
    return (int(idx), rest) if idx.isdigit() else None


def existing_lora_adapter(model: nn.Module) -> str | None:
    """Name of the active LoRA adapter of a peft model that has LoRA tensors, else None.

    A secret learned by fine-tuning an adapter lives in that adapter: scrub it
    there (spec `lora`) rather than adding a second one.
    """
    active = getattr(model, "active_adapter", None)
    if active is None:
        return None
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    if not isinstance(active, str):
        return None
    for name, _ in model.named_parameters():
        if _is_lora_name(name, active):
            return active
    return None


def _is_lora_name(name: str, adapter: str | None) -> bool:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_"):
            if adapter is None:
                return True
            if i + 1 < len(parts) and parts[i + 1] == adapter:
                return True
    return False


def _is_norm_module(mod: nn.Module) -> bool:
    return isinstance(mod, nn.LayerNorm) or "norm" in type(mod).__name__.lower()


# ----------------------------------------------------------------------------- selection


class _Index:
    """Canonical names, aliases and module ownership, computed once per selection call."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.canonical: dict[int, str] = {}
        self.param_by_name: dict[str, nn.Parameter] = {}
        self.all_names: list[tuple[str, str]] = []  # (name incl. aliases, canonical)
        for name, p in model.named_parameters(remove_duplicate=False):
            canon = self.canonical.setdefault(id(p), name)
            if canon == name:
                self.param_by_name[name] = p
            self.all_names.append((name, canon))
        self.order = list(self.param_by_name)
        self._blocks: tuple[str, nn.ModuleList] | None = None

    @property
    def blocks(self) -> tuple[str, nn.ModuleList]:
        if self._blocks is None:
            self._blocks = find_block_list(self.model)
        return self._blocks

    def module_params(self, modules: Sequence[nn.Module]) -> set[str]:
        out = set()
        for mod in modules:
            for p in mod.parameters():
                if id(p) in self.canonical:
                    out.add(self.canonical[id(p)])
        return out

    def in_blocks(self, pred) -> set[str]:
        prefix, _ = self.blocks
        out = set()
        for name, canon in self.all_names:
            loc = _block_of(name, prefix)
            if loc is not None and pred(loc[0], loc[1]):
                out.add(canon)
        return out


def _preset(index: _Index, preset: str) -> set[str]:
    model = index.model
    if preset == "all":
        return set(index.order)
    if preset == "mlp":
        return index.in_blocks(lambda i, rest: rest.split(".")[0] in _MLP_NAMES)
    if preset == "attn":
        return index.in_blocks(lambda i, rest: rest.split(".")[0] in _ATTN_NAMES)
    if preset == "norm":
        return index.module_params([m for m in model.modules() if _is_norm_module(m)])
    if preset == "lora":
        adapter = existing_lora_adapter(model)
        if adapter is None:
            raise ValueError("spec 'lora' selects nothing: the model has no LoRA adapter (add one with add_lora_adapter)")
        return {c for n, c in index.all_names if _is_lora_name(n, adapter)}
    if preset == "lm_head":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            return {c for n, c in index.all_names if "lm_head" in n.split(".")}
        tensors = [getattr(head, "weight", None), getattr(head, "bias", None)]
        return {index.canonical[id(t)] for t in tensors if isinstance(t, torch.Tensor) and id(t) in index.canonical}
    if preset == "embeddings":
        prefix, _ = index.blocks
        mods = [
            m
            for n, m in model.named_modules()
            if isinstance(m, nn.Embedding) and not n.startswith(prefix + ".")
        ]
        inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if isinstance(inp, nn.Module):
            mods.append(inp)
        return index.module_params(mods)
    raise AssertionError(preset)


def _block_range(index: _Index, text: str) -> set[str]:
    _, blocks = index.blocks
    n = len(blocks)
    if ":" in text:
        try:
            parts = [int(p) if p else None for p in text.split(":")]
        except ValueError:
            raise ValueError(f"bad block range {text!r}: use Python slice syntax such as -2: or 1:3") from None
        if len(parts) == 3 and parts[2] == 0:
            raise ValueError(f"block range {text!r}: slice step cannot be zero")
        chosen = set(range(n)[slice(*parts)])
    else:
        i = int(text)
        if not -n <= i < n:
            raise ValueError(f"block index {i} out of range: the model has {n} blocks")
        chosen = {i % n}
    return index.in_blocks(lambda i, rest: i in chosen)


def _atom(index: _Index, item: str) -> set[str]:
    if item.startswith("re:"):
        try:
            rx = re.compile(item[3:])
        except re.error as e:
            raise ValueError(f"bad regex in spec {item!r}: {e}") from None
        return {c for n, c in index.all_names if rx.search(n)}
    if item in PRESETS:
        return _preset(index, item)
    if _BLOCK_RANGE.match(item):
        return _block_range(index, item)
    if ":" in item and re.fullmatch(r"[-\w:]+", item):
        raise ValueError(f"bad block range {item!r}: use Python slice syntax such as -2: or 1:3")
    if _BARE_WORD.match(item):
        raise ValueError(f"unknown preset {item!r}: use one of {', '.join(PRESETS)}, a block range, re:REGEX or a glob")
    return {c for n, c in index.all_names if fnmatch.fnmatchcase(n, item)}


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on sep outside (), [] and {} so regexes like a{1,2} survive."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _chain(index: _Index, item: str) -> set[str]:
    """`a/b/c`: intersection; a `re:` part takes the rest of the item (regexes may contain '/')."""
    parts = item.split("/")
    atoms: list[str] = []
    for i, part in enumerate(parts):
        if part.startswith("re:"):
            atoms.append("/".join(parts[i:]))
            break
        atoms.append(part)
    result: set[str] | None = None
    for atom in atoms:
        if not atom:
            raise ValueError(f"empty selector in spec {item!r}")
        chosen = _atom(index, atom)
        result = chosen if result is None else result & chosen
    return result or set()


def select_parameters(model: nn.Module, spec: str | Sequence[str]) -> ParameterSelection:
    """The tensors named by `spec` (see the module docstring), in model order, each once.

    Raises ValueError (one line) for an unknown preset, a malformed item, or an
    item that selects nothing: an update over nothing is always a mistake.
    """
    items = _split_top_level(spec, ",") if isinstance(spec, str) else list(spec)
    items = [it.strip() for it in items]
    if not items or any(not it for it in items):
        raise ValueError(f"empty parameter spec {spec!r}")
    index = _Index(model)
    chosen: set[str] = set()
    for item in items:
        got = _chain(index, item)
        if not got:
            raise ValueError(f"parameter spec {item!r} selects nothing in {type(model).__name__}")
        chosen |= got
    names = [n for n in index.order if n in chosen]
    aliases: dict[str, list[str]] = {}
    for n, canon in index.all_names:
        if n != canon and canon in chosen:
            aliases.setdefault(canon, []).append(n)
    return ParameterSelection(model, names, [index.param_by_name[n] for n in names], aliases)


# ----------------------------------------------------------------------------- LoRA


def _has_conv1d(model: nn.Module) -> bool:
    return any(type(m).__name__ == "Conv1D" for m in model.modules())


def add_lora_adapter(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    target_modules: str | list[str] | None = None,
    *,
    dropout: float = 0.0,
    adapter_name: str = "default",
):
    """Wrap `model` in a peft model with a fresh LoRA adapter to carry the update.

    B starts at zero (peft's default), so the wrapped model computes exactly
    what the original did until an update is applied; the update can then be
    saved as an adapter or merged. Default targets: every linear / Conv1D
    layer except the output head ("all-linear"). peft modifies `model` in
    place (it injects the adapter layers): pass a copy to keep the original.
    A model that already is a peft model is refused: scrub its own adapter
    (`existing_lora_adapter`, spec `lora`) or use `lora_update_target`.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError(
            f"model already has peft adapter(s) {list(model.peft_config)}: scrub the existing one with spec 'lora'"
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if target_modules is not None else "all-linear",
        fan_in_fan_out=_has_conv1d(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(model, config, adapter_name=adapter_name)


@dataclass
class LoraTarget:
    """Where a LoRA-mode update goes: the model to update, its adapter, and whether we created it."""

    model: nn.Module
    adapter_name: str
    created: bool

    def selection(self) -> ParameterSelection:
        return select_parameters(self.model, "lora")


def lora_update_target(
    model: nn.Module, r: int = 8, alpha: int = 16, target_modules: str | list[str] | None = None
) -> LoraTarget:
    """Reuse a peft model's own LoRA adapter (where the secret was learned), else add a fresh one."""
    adapter = existing_lora_adapter(model)
    if adapter is not None:
        return LoraTarget(model, adapter, created=False)
    peft_model = add_lora_adapter(model, r=r, alpha=alpha, target_modules=target_modules)
    return LoraTarget(peft_model, existing_lora_adapter(peft_model) or "default", created=True)
