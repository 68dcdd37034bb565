"""Building the model and tokenizer a job asks for (ModelSpec), the start adapter and the LoRA.

Sources: `tiny` (random init from a small config, byte-level tokenizer, no download), `path`
(a local HF directory) and `gguf` (a GGUF file, de-quantised once into the node's model cache:
methods/model_cache.py).
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from launcher.contract import LoraSpec, ModelSpec
from methods.model_cache import converted_gguf, resolve_gguf

log = logging.getLogger(__name__)

# Byte tokenizer layout: specials first so their ids are stable (pad 0, bos 1, eos 2), then 256 bytes.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
# A minimal chat template so `template: chat` / `auto` work on tiny models like on instruct models.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=128, max_position_embeddings=1024)
TINY_OLMOE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=32, num_experts=8, num_experts_per_tok=2, max_position_embeddings=1024)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what tokenizers' ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """Deterministic byte-level tokenizer: one token per byte, no merges, nothing to train or download."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    for b, ch in _bytes_to_unicode().items():
        vocab[ch] = len(SPECIAL_TOKENS) + b
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    # Like Llama: BOS in front when add_special_tokens=True, EOS appended by the data code.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def tiny_model(kind: str, tokenizer: PreTrainedTokenizerBase, overrides: dict, seed: int) -> PreTrainedModel:
    """A random-init model from a small config, seeded so every rank builds identical weights."""
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg_cls, model_cls, base = LlamaConfig, LlamaForCausalLM, TINY_LLAMA
    elif kind == "olmoe":
        from transformers import OlmoeConfig, OlmoeForCausalLM
        cfg_cls, model_cls, base = OlmoeConfig, OlmoeForCausalLM, TINY_OLMOE
    else:
        raise ValueError(f"unknown tiny model {kind!r}")
    config = cfg_cls(**{**base, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, **overrides})
    # Seed a private generator state: the global RNG (which the Trainer seeds itself) is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    if spec.tokenizer:
        tok = AutoTokenizer.from_pretrained(spec.tokenizer)
    elif spec.tiny:
        tok = byte_tokenizer()
    elif spec.gguf:
        tok = AutoTokenizer.from_pretrained(str(converted_gguf(resolve_gguf(spec.gguf))))
    else:
        tok = AutoTokenizer.from_pretrained(spec.path)
    if tok.pad_token_id is None:
        # No embedding resize (Lisa adds [PAD] and resizes): pad = eos is safe because labels and
        # attention masks are built by position, never by comparing ids with pad_token_id.
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_base_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> PreTrainedModel:
    """The base model. For ZeRO-3 the TrainingArguments (HfDeepSpeedConfig) must exist before this
    call, so that from_pretrained partitions the weights while loading."""
    if spec.tiny:
        return tiny_model(spec.tiny, tokenizer, spec.tiny_config, spec.seed).to(dtype)
    src = str(converted_gguf(resolve_gguf(spec.gguf))) if spec.gguf else spec.path
    return AutoModelForCausalLM.from_pretrained(src, dtype=dtype)


def lora_config(spec: LoraSpec):
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=list(spec.target_modules), bias="none", task_type="CAUSAL_LM")


STACKED_ADAPTER = "start"  # the frozen start adapter in stack mode
TRAINABLE_ADAPTER = "default"  # PEFT's default name: saved at the root of an adapter dir


def attach_adapters(model: PreTrainedModel, spec: ModelSpec, lora: LoraSpec | None,
                    gradient_checkpointing: bool) -> torch.nn.Module:
    """Start adapter (merged or stacked frozen) + the new trainable LoRA.

    With gradient checkpointing and a frozen base, the checkpointed blocks' inputs carry no grad
    and, with reentrant checkpointing, LoRA gets none: enable_input_require_grads fixes that
    (transformers 5.x defaults to use_reentrant=False, but a user's kwargs may turn it back on).
    """
    from peft import PeftModel, get_peft_model

    if gradient_checkpointing:
        model.enable_input_require_grads()
    if spec.adapter and spec.adapter_mode == "merge":
        model = PeftModel.from_pretrained(model, spec.adapter, is_trainable=False).merge_and_unload()
    if lora is None:
        if spec.adapter and spec.adapter_mode == "stack":
            raise ValueError("adapter_mode stack needs training.lora (the new adapter to train)")
        return model  # full fine-tuning
    if spec.adapter and spec.adapter_mode == "stack":
        peft_model = PeftModel.from_pretrained(model, spec.adapter, adapter_name=STACKED_ADAPTER, is_trainable=False)
        peft_model.add_adapter(TRAINABLE_ADAPTER, lora_config(lora))
        # Both adapters take part in the forward pass; set_adapter marks both trainable, so the
        # start adapter is frozen again by hand.
        peft_model.base_model.set_adapter([STACKED_ADAPTER, TRAINABLE_ADAPTER])
        for name, param in peft_model.named_parameters():
            if f".{STACKED_ADAPTER}." in name:
                param.requires_grad_(False)
        return peft_model
    return get_peft_model(model, lora_config(lora))


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def attention_implementation(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")
