"""GGUF checkpoints as input: ``load_model`` on a ``.gguf`` file or a directory holding one.

Why: many users have a model only as a llama.cpp GGUF. The test writes a tiny
llama GGUF itself (a byte-level BPE vocabulary and random weights, in the
layout llama.cpp's converter produces: Q/K rows permuted, GGUF tensor names),
so it runs in seconds and offline. The independent reference is the same
weights saved as an ordinary safetensors checkpoint and loaded the usual way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from scrubber.errors import ScrubberError  # noqa: E402
from scrubber.io.checkpoint import load_model, read_gguf_info, save_model  # noqa: E402

N_LAYER, D_MODEL, N_HEAD, N_KV, D_FF = 2, 64, 4, 2, 128
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("1", "2")]
TEXT = "the cat in the hat sat on 12 mats"


def _vocab() -> tuple[list[str], list[int]]:
    """256 byte symbols, the merge results, then two control tokens (type 3)."""
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += ["".join(m) for m in MERGES]
    types = [1] * len(tokens)
    tokens += ["<s>", "</s>"]
    types += [3, 3]
    return tokens, types


def _reference_tokenizer(tokens: list[str]) -> PreTrainedTokenizerFast:
    """The same BPE built directly with ``tokenizers`` (not through transformers' GGUF code)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES)))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def _tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # RMSNorm weights start at 1; make them informative
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order for Q/K (pairs interleaved per head); transformers undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(
    path: Path,
    model: LlamaForCausalLM,
    tokens: list[str],
    types: list[int],
    *,
    qtype: "gguf.GGMLQuantizationType | None" = None,
    architecture: str = "llama",
) -> dict[str, torch.Tensor]:
    """Write ``model`` as a GGUF; returns the HF state dict the file encodes (after quantization)."""
    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny-llama-test")
    w.add_block_count(N_LAYER)
    w.add_context_length(128)
    w.add_embedding_length(D_MODEL)
    w.add_feed_forward_length(D_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(D_MODEL // N_HEAD)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == Q.Q8_0 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, N_LAYER)
    encoded = {}
    for hf_name, t in model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        gname = names.get_name(base) + "." + suffix
        arr = t.detach().float().numpy().copy()
        if qtype is not None and arr.ndim == 2:
            packed = gguf.quants.quantize(arr, qtype)
            arr = gguf.quants.dequantize(packed, qtype).reshape(arr.shape)  # what the file holds
        encoded[hf_name] = torch.from_numpy(arr.copy())
        if ".attn_q." in gname:
            arr = _permute(arr, N_HEAD)
        elif ".attn_k." in gname:
            arr = _permute(arr, N_KV)
        if qtype is not None and arr.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return encoded


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(gguf file, safetensors dir of the same weights, reference tokenizer)."""
    tokens, types = _vocab()
    model = _tiny_llama(len(tokens))
    root = tmp_path_factory.mktemp("gguf")
    f = root / "tiny.F32.gguf"
    write_llama_gguf(f, model, tokens, types)
    st = root / "st"
    tok = _reference_tokenizer(tokens)
    model.save_pretrained(st)
    tok.save_pretrained(st)
    return f, st, tok


def _logits(loaded, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


def test_gguf_file_loads_to_the_same_model_as_safetensors(tiny_gguf):
    f, st, ref_tok = tiny_gguf
    g = load_model(f)
    s = load_model(st)
    assert (g.source_format, g.gguf_file, g.dequantized_from) == ("gguf", f, "ALL_F32")
    assert (s.source_format, s.gguf_file, s.dequantized_from) == ("safetensors", None, None)
    assert g.architecture == "LlamaForCausalLM" and g.dtype == "float32"
    # The tokenizer transformers builds from tokenizer.ggml.* splits like the reference BPE.
    ids = ref_tok(TEXT)["input_ids"]
    assert g.tokenizer(TEXT)["input_ids"] == ids
    assert len(ids) < len(TEXT.encode())  # the merges were applied, not bytes only
    gs, ss = g.model.state_dict(), s.model.state_dict()
    assert set(gs) == set(ss)
    for k in ss:  # F32 storage: exact, including the un-permuted Q/K rows
        torch.testing.assert_close(gs[k], ss[k], rtol=0, atol=0, msg=k)
    x = torch.tensor([ids])
    torch.testing.assert_close(_logits(g, x), _logits(s, x), rtol=0, atol=1e-5)


def test_directory_with_one_gguf_and_quantized_weights(tmp_path):
    """Q8_0 file in a directory: weights equal the dequantized blocks, logits close to float32."""
    tokens, types = _vocab()
    model = _tiny_llama(len(tokens))
    d = tmp_path / "dl"
    d.mkdir()
    encoded = write_llama_gguf(d / "m.Q8_0.gguf", model, tokens, types, qtype=gguf.GGMLQuantizationType.Q8_0)
    g = load_model(d, dtype="float32")
    assert (g.source_format, g.dequantized_from) == ("gguf", "MOSTLY_Q8_0")
    gs = g.model.state_dict()
    for k, v in encoded.items():
        torch.testing.assert_close(gs[k], v, rtol=0, atol=1e-6, msg=k)
    # Quantization changed the weights a little but not the model: a stated effect size.
    x = torch.tensor([_reference_tokenizer(tokens)(TEXT)["input_ids"]])
    with torch.no_grad():
        full = model(input_ids=x).logits
        q = g.model(input_ids=x).logits
    gap = (full - q).abs().max().item()
    assert 0 < gap < 0.05, gap
    # scrub writes safetensors: what we save reloads as an ordinary checkpoint.
    out = tmp_path / "saved"
    save_model(g, out)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.gguf"))
    back = load_model(out)
    assert back.source_format == "safetensors"
    assert "quantization_config" not in back.model.config.to_dict()
    torch.testing.assert_close(back.model.state_dict()["lm_head.weight"], gs["lm_head.weight"])


def test_bf16_load_of_gguf(tiny_gguf):
    f, _, _ = tiny_gguf
    g = load_model(f, dtype=torch.bfloat16)
    assert g.dtype == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in g.model.parameters())


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_truncated_gguf_is_one_line_error(tiny_gguf, tmp_path):
    f, _, _ = tiny_gguf
    data = f.read_bytes()
    for cut in (len(data) // 2, 40):  # tensor data cut off; header cut off
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ScrubberError) as err:
            load_model(bad)
        assert "corrupt or truncated GGUF" in _one_line(err)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ScrubberError) as err:
        load_model(junk)
    assert "corrupt or truncated GGUF" in _one_line(err)


def test_unsupported_architecture_is_one_line_error(tmp_path):
    tokens, types = _vocab()
    f = tmp_path / "x.gguf"
    write_llama_gguf(f, _tiny_llama(len(tokens)), tokens, types, architecture="rwkv7")
    with pytest.raises(ScrubberError) as err:
        read_gguf_info(f)
    assert "'rwkv7' cannot be read by transformers" in _one_line(err)
    with pytest.raises(ScrubberError) as err:
        load_model(f)
    assert "'rwkv7'" in _one_line(err)


def test_directory_rules(tiny_gguf, tmp_path):
    f, st, _ = tiny_gguf
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(f.read_bytes())
    (two / "b.gguf").write_bytes(f.read_bytes())
    with pytest.raises(ScrubberError) as err:
        load_model(two)
    assert "2 GGUF files" in _one_line(err)
    # A directory with safetensors is an ordinary checkpoint even if a GGUF lies beside it.
    both = tmp_path / "both"
    both.mkdir()
    for p in st.iterdir():
        (both / p.name).write_bytes(p.read_bytes())
    (both / "junk.gguf").write_bytes(b"garbage")
    assert load_model(both).source_format == "safetensors"
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ScrubberError) as err:
        load_model(other)
    assert "not a model directory or a .gguf file" in _one_line(err)


def test_dtype_validation(saved_tiny_model):
    for name, want in (("float32", torch.float32), ("bf16", torch.bfloat16), ("float16", torch.float16)):
        m = load_model(saved_tiny_model, dtype=name)
        assert next(m.model.parameters()).dtype == want
    with pytest.raises(ScrubberError) as err:
        load_model(saved_tiny_model, dtype="int8")
    assert "unknown dtype 'int8'" in _one_line(err)
    with pytest.raises(ScrubberError):
        load_model(saved_tiny_model, dtype=torch.int32)


def test_device_map_auto_on_cpu(saved_tiny_model):
    """accelerate's ``device_map='auto'`` passes through: same model, on the one device there is."""
    pytest.importorskip("accelerate")
    plain = load_model(saved_tiny_model)
    m = load_model(saved_tiny_model, device_map="auto")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert {p.device.type for p in m.model.parameters()} == {want}
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(m.model(input_ids=x.to(want)).logits.cpu(), plain.model(input_ids=x).logits)
    with pytest.raises(ScrubberError) as err:  # proves the argument reaches from_pretrained
        load_model(saved_tiny_model, device_map="no-such-strategy")
    _one_line(err)
