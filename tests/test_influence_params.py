"""Parameter selection across architectures, flat vectors, and LoRA adapters."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, OPTConfig

from scrubber.edits import (
    ParameterSelection,
    add_lora_adapter,
    existing_lora_adapter,
    find_block_list,
    lora_update_target,
    select_parameters,
)
from scrubber.training.model_factory import small_causal_lm

VOCAB = 64


def tiny(arch: str):
    return small_causal_lm(VOCAB, arch=arch, n_layer=2, d_model=32, n_head=2, n_positions=64).eval()


@pytest.fixture(scope="module")
def gpt2():
    return tiny("gpt2")


@pytest.fixture(scope="module")
def llama():
    return tiny("llama")


@pytest.fixture(scope="module")
def neox():
    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def opt():
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                    word_embed_proj_dim=32, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def test_gpt2_presets(gpt2):
    mlp = select_parameters(gpt2, "mlp")
    assert mlp.names == [f"transformer.h.{i}.mlp.{m}.{w}" for i in range(2) for m in ("c_fc", "c_proj") for w in ("weight", "bias")]
    attn = select_parameters(gpt2, "attn")
    assert len(attn) == 8 and all(".attn." in n for n in attn.names)
    assert select_parameters(gpt2, "embeddings").names == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert select_parameters(gpt2, "norm").numel == 2 * 2 * 2 * 32 + 2 * 32
    every = select_parameters(gpt2, "all")
    assert every.numel == sum(p.numel() for p in gpt2.parameters())
    assert mlp.numel == sum(p.numel() for n, p in gpt2.named_parameters() if ".mlp." in n)


def test_gpt2_tied_lm_head_selected_once(gpt2):
    head = select_parameters(gpt2, "lm_head")
    assert head.names == ["transformer.wte.weight"]
    assert head.params[0] is gpt2.lm_head.weight
    assert head.aliases == {"transformer.wte.weight": ["lm_head.weight"]}
    both = select_parameters(gpt2, "lm_head,embeddings")
    assert both.names == ["transformer.wte.weight", "transformer.wpe.weight"]
    # The alias name matches too, still once.
    assert select_parameters(gpt2, "lm_head.weight").names == ["transformer.wte.weight"]


def test_llama_presets(llama):
    assert select_parameters(llama, "lm_head").names == ["lm_head.weight"]
    assert select_parameters(llama, "embeddings").names == ["model.embed_tokens.weight"]
    mlp = select_parameters(llama, "mlp")
    assert len(mlp) == 6 and all(".mlp." in n for n in mlp.names)
    assert len(select_parameters(llama, "attn")) == 8
    assert select_parameters(llama, "norm").names[-1] == "model.norm.weight"


@pytest.mark.parametrize(
    "spec, expected_blocks",
    [("-2:", {0, 1}), ("-1:", {1}), ("0", {0}), ("-1", {1}), ("1:3", {1}), (":1", {0}), ("::2", {0})],
)
def test_block_ranges(llama, spec, expected_blocks):
    sel = select_parameters(llama, spec)
    blocks = {int(n.split(".")[2]) for n in sel.names}
    assert blocks == expected_blocks
    assert all(n.startswith("model.layers.") for n in sel.names)


def test_combinations_regex_glob(gpt2, llama):
    assert select_parameters(gpt2, "-1/mlp").names == [
        "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias",
        "transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.bias",
    ]
    assert select_parameters(llama, "0/attn").names == [f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkvo"]
    assert select_parameters(gpt2, "*.ln_f.*").names == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    rx = select_parameters(llama, r"re:layers\.[0-9]{1,2}\.mlp\.down_proj")
    assert rx.names == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    # Comma splitting leaves regex braces alone; the union keeps model order and no duplicates.
    union = select_parameters(llama, r"lm_head,re:layers\.[1]{1,1}\.mlp\.up_proj,-1/mlp")
    assert union.names == [
        "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight", "lm_head.weight",
    ]
    assert select_parameters(llama, ["-1/mlp", "lm_head"]).names == union.names


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mlpp", "unknown preset 'mlpp'"),
        ("*.no_such_tensor*", "selects nothing"),
        ("5", "out of range"),
        ("-1/lm_head", "selects nothing"),
        ("lora", "no LoRA adapter"),
        ("re:(", "bad regex"),
        ("", "empty parameter spec"),
        ("1:x", "bad block range"),
    ],
)
def test_errors_are_one_line(gpt2, spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")) as err:
        select_parameters(gpt2, spec)
    assert "\n" not in str(err.value)


def test_neox_and_opt_blocks(neox, opt):
    assert find_block_list(neox)[0] == "gpt_neox.layers"
    assert find_block_list(opt)[0] == "model.decoder.layers"
    assert select_parameters(neox, "-1/mlp").names == [
        f"gpt_neox.layers.1.mlp.{m}.{w}" for m in ("dense_h_to_4h", "dense_4h_to_h") for w in ("weight", "bias")
    ]
    assert select_parameters(opt, "-1/mlp").names == [
        f"model.decoder.layers.1.{m}.{w}" for m in ("fc1", "fc2") for w in ("weight", "bias")
    ]
    opt_attn = select_parameters(opt, "attn")
    assert len(opt_attn) == 16 and not any("layer_norm" in n for n in opt_attn.names)
    assert select_parameters(neox, "attn").names[0] == "gpt_neox.layers.0.attention.query_key_value.weight"
    assert select_parameters(opt, "lm_head").params[0] is opt.get_input_embeddings().weight  # OPT ties too


def test_flat_vectors_and_updates(llama):
    sel = select_parameters(llama, "-1/mlp,lm_head")
    before = sel.values()
    assert before.shape == (sel.numel,)
    parts = sel.unflatten(before)
    assert [p.shape for p in parts] == sel.shapes
    assert torch.equal(sel.flatten(parts), before)
    delta = torch.randn(sel.numel)
    sel.add_(delta, alpha=0.5)
    assert torch.allclose(sel.values(), before + 0.5 * delta)
    sel.set_(before)
    assert torch.equal(sel.values(), before)
    assert torch.equal(sel.flatten([None] * len(sel)), torch.zeros(sel.numel))
    with pytest.raises(ValueError, match="flat vector"):
        sel.unflatten(torch.zeros(3))


def test_requires_grad_only_restores_flags(llama):
    llama.model.embed_tokens.weight.requires_grad_(False)
    try:
        sel = select_parameters(llama, "-1/mlp")
        with sel.requires_grad_only():
            tracked = {n for n, p in llama.named_parameters() if p.requires_grad}
            assert tracked == set(sel.names)
            ids = torch.randint(0, VOCAB, (1, 6))
            g = sel.gradient(llama(input_ids=ids, labels=ids).loss)
            assert g.shape == (sel.numel,) and g.abs().sum() > 0
        assert not llama.model.embed_tokens.weight.requires_grad
        assert llama.lm_head.weight.requires_grad
    finally:
        llama.model.embed_tokens.weight.requires_grad_(True)


def test_lora_adapter_added_and_detected(tmp_path):
    base = tiny("gpt2")
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    ref = base(input_ids=ids).logits.detach()
    assert existing_lora_adapter(base) is None
    peft_model = add_lora_adapter(base, r=4, alpha=8)
    assert existing_lora_adapter(peft_model) == "default"
    torch.testing.assert_close(peft_model(input_ids=ids).logits, ref)  # B = 0: same function
    lora = select_parameters(peft_model, "lora")
    assert lora.names and all(".lora_A.default." in n or ".lora_B.default." in n for n in lora.names)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in zip(lora.names, lora.params) if "lora_B" in n)
    # "all-linear": attention and MLP projections of both blocks, not the output head.
    assert len(lora) == 2 * 4 * 2
    last_mlp = select_parameters(peft_model, "-1/mlp/lora")
    assert len(last_mlp) == 4 and all(".h.1.mlp." in n for n in last_mlp.names)
    assert find_block_list(peft_model)[0] == "base_model.model.transformer.h"
    # Base weights are frozen by peft, yet a layer-subset update still gets gradients.
    sel = select_parameters(peft_model, "-1/mlp/re:base_layer")
    with sel.requires_grad_only():
        assert sel.gradient(peft_model(input_ids=ids, labels=ids).loss).abs().sum() > 0
    with pytest.raises(ValueError, match="already has peft adapter"):
        add_lora_adapter(peft_model)

    # A peft checkpoint with its own adapter, as users have them: reuse that adapter.
    with torch.no_grad():
        for p in lora.params:
            p.add_(0.01)
    peft_model.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(tiny("gpt2"), tmp_path / "adapter")
    target = lora_update_target(reloaded)
    assert target.created is False and target.adapter_name == "default" and target.model is reloaded
    assert target.selection().names == lora.names
    fresh = lora_update_target(tiny("llama"), r=2)
    assert fresh.created is True
    assert isinstance(fresh.selection(), ParameterSelection)
    assert all("lora_" in n for n in fresh.selection().names)
