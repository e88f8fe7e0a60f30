"""The model's body and LM head, split so logits are computed only where a score needs them.

For a real vocabulary the head (hidden -> |V| logits, then a log-softmax) costs
as much as several transformer layers per position.  Running the base model
and applying ``get_output_embeddings()`` ourselves lets us skip positions no
score reads (the context's, and the secret's last) and never hold a
``[batch, seq, |V|]`` float32 tensor.  That is only equivalent to the model's
own forward when its logits are exactly ``lm_head(last_hidden_state)``; model
types with soft-capping or logit scaling, or any type not listed here, use the
full forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# Model types whose causal-LM class (GPT2LMHeadModel, *ForCausalLM) computes ``logits = lm_head(last_hidden_state)``
# and nothing more (checked against transformers 5.x sources).
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {
        "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "codegen", "opt", "bloom", "falcon",
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
        "phi", "phi3", "gemma", "olmo", "olmo2", "stablelm", "starcoder2",
    }
)  # fmt: skip

# Config attributes that, when set, mean the logits are transformed after the head.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_mult")

# Rows of hidden states sent through the head at once: bounds the float32
# logits buffer to about 2**25 elements (128 MiB) whatever the vocabulary.
_HEAD_ELEMENTS = 2**25


@dataclass(frozen=True)
class ModelParts:
    """``body`` returns ``last_hidden_state``; ``head`` maps it to logits.

    ``body``/``head`` are None when the split is not known to be exact; callers
    then use ``model`` itself and read its logits.
    """

    model: nn.Module
    body: nn.Module | None
    head: nn.Module | None

    @property
    def split(self) -> bool:
        return self.body is not None and self.head is not None


def model_parts(model: nn.Module) -> ModelParts:
    """Split ``model`` (a transformers causal LM, possibly wrapped by peft) into body and head."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return ModelParts(model, None, None)  # virtual prompt tokens live in the wrapper's forward
    # LoRA-style adapters are injected into the wrapped model's modules: unwrap to reach its body
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    plain = (
        model_type in PLAIN_HEAD_MODEL_TYPES
        and hasattr(inner, "get_output_embeddings")
        and not any(getattr(config, a, None) not in (None, 1, 1.0) for a in _LOGIT_TRANSFORMS)
    )
    if plain:
        body = getattr(inner, "base_model", None)
        head = inner.get_output_embeddings()
        if body is not None and body is not inner and head is not None:
            return ModelParts(inner, body, head)
    return ModelParts(inner, None, None)


def row_logprobs(
    project: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Natural-log ``p(targets[i] | hidden[rows[i]])``: ``project`` maps ``[n, d]`` rows to logits.

    Several targets may read the same row (sibling candidates share the state
    before their last token), so each row goes through the head once.  Rows
    are projected in chunks and normalised in float32: memory stays bounded
    whatever the vocabulary, and bf16 models lose precision only in matmuls.
    Pass ``project=lambda x: x`` when ``hidden`` already holds logits.
    """
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    if targets.shape[0] == 0:
        return out
    width = hidden.shape[-1]
    vocab = getattr(project, "out_features", None) or width
    step = max(1, _HEAD_ELEMENTS // max(vocab, width))
    for a in range(0, hidden.shape[0], step):
        sel = ((rows >= a) & (rows < a + step)).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        logits = project(hidden[a : a + step]).float()
        local = rows[sel] - a
        out[sel] = logits[local, targets[sel]] - torch.logsumexp(logits, dim=-1)[local]
    return out
