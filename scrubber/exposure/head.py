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


def target_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Natural-log ``p(target | hidden)`` for rows of ``hidden`` ``[n, d]`` and ``targets`` ``[n]``.

    The head runs in chunks and the log-normaliser in float32, so bf16 models
    lose precision only in their matmuls.
    """
    vocab = getattr(head, "out_features", None) or 50_000
    step = max(1, _HEAD_ELEMENTS // vocab)
    out = []
    for i in range(0, hidden.shape[0], step):
        logits = head(hidden[i : i + step]).float()
        picked = logits.gather(1, targets[i : i + step, None]).squeeze(1)
        out.append(picked - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def logits_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Same as :func:`target_logprobs` for logits the model already computed (``[n, |V|]``)."""
    logits = logits.float()
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
