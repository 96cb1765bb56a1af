#!/usr/bin/env python3
"""Reference outputs from transformers + PEFT for the Rust parity tests.

usage: make_reference.py OUT_DIR

Writes, for each tiny random model (fixed seed):
  OUT_DIR/<name>/            config.json, model.safetensors (HF layout)
  OUT_DIR/<name>/adapter/    a PEFT LoRA adapter with non-zero B (alpha != r)
  OUT_DIR/<name>/reference.safetensors
      input_ids [2, T], attention_mask [2, T] (row 1 right-padded),
      logits (base model), logits_lora (base + adapter)
  OUT_DIR/<name>/grads.safetensors: the adapter's gradients of the mean
      next-token cross-entropy on the reference inputs, by PEFT key
and OUT_DIR/tok/: a byte-level BPE tokenizer with SmolLM2's chat template, plus
reference.json with apply_chat_template texts and ids for several conversations.
Test-only: needs torch, transformers, peft, tokenizers.
"""
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig,
                          GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

VOCAB = 97
T = 10


def models():
    yield "gpt2", GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)), ["c_attn", "c_proj", "c_fc"]
    yield "llama", LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)), \
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    yield "llama3", LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})), \
        ["q_proj", "v_proj"]
    small = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # Qwen2: biases on q, k, v (random here, as trained ones are), none on o.
    yield "qwen2", randomized(Qwen2ForCausalLM(Qwen2Config(**small, rope_theta=1e6))), every
    # Qwen3: per-head q/k RMSNorm, head_dim apart from hidden/heads, tied head.
    yield "qwen3", randomized(Qwen3ForCausalLM(Qwen3Config(
        **small, head_dim=16, tie_word_embeddings=True))), ["q_proj", "k_proj", "o_proj", "down_proj"]
    # Mistral: every layer sees 4 positions of the 10.
    yield "mistral", randomized(MistralForCausalLM(MistralConfig(**small, sliding_window=4))), every
    # Phi-3.5: q/k/v and gate/up fused in the checkpoint, one LoRA each; a
    # sliding window of 6; LongRoPE extending 32 positions to 64 (short factors
    # within 32, cos/sin scaled).
    yield "phi3", randomized(Phi3ForCausalLM(Phi3Config(
        **small, pad_token_id=0, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attention_dropout=0.0, original_max_position_embeddings=32,
        sliding_window=6, rope_scaling={
            "type": "longrope", "short_factor": [1.0, 1.3, 2.0, 3.5],
            "long_factor": [1.5, 2.0, 4.0, 8.0]}))), \
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    # Phi-4-mini: the same architecture, the leading 6 of each head's 8
    # dimensions rotating (partial_rotary_factor 0.75; LongRoPE factors for
    # those 6), a tied head, no window.
    yield "phi4", randomized(Phi3ForCausalLM(Phi3Config(
        **small, pad_token_id=0, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attention_dropout=0.0, original_max_position_embeddings=32,
        partial_rotary_factor=0.75, tie_word_embeddings=True, rope_scaling={
            "type": "longrope", "short_factor": [1.0, 1.7, 3.0],
            "long_factor": [1.5, 2.0, 4.0]}))), \
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    # Gemma: (1 + w) norms, embeddings x sqrt(hidden), GELU(tanh)-gated MLP, tied head.
    gemma = dict(small, head_dim=8, initializer_range=0.1, attn_implementation="eager")
    yield "gemma", randomized(GemmaForCausalLM(GemmaConfig(
        **gemma, hidden_act="gelu_pytorch_tanh"))), every
    # Gemma 2: norms around each block, query_pre_attn_scalar apart from head_dim,
    # attention scores and logits soft-capped low enough to bite, layer 0
    # sliding within 4 positions of the 10 (layer 1 global).
    yield "gemma2", randomized(Gemma2ForCausalLM(Gemma2Config(
        **gemma, query_pre_attn_scalar=12, attn_logit_softcapping=0.5,
        final_logit_softcapping=2.0, sliding_window=4))), every
    # Gemma 3: q/k norms, a sliding layer with its own rotary theta, a global
    # layer with rope_theta and linear scaling.
    yield "gemma3", randomized(Gemma3ForCausalLM(Gemma3TextConfig(
        **dict(gemma, head_dim=16), query_pre_attn_scalar=10, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], rope_theta=1e6,
        rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_local_base_freq=100.0))), \
        ["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"]
    # Gemma 3 with its vision tower (the 4B+ checkpoints): read as its text
    # model, whose config.json gives only what differs from the defaults.
    yield "gemma3mm", randomized(Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=Gemma3TextConfig(**dict(gemma, head_dim=16), query_pre_attn_scalar=10,
                                     sliding_window=4, sliding_window_pattern=2),
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4))), ["q_proj", "v_proj", "down_proj"]


# PEFT's exclude_modules for a multimodal checkpoint (lorastream's NOT_TEXT).
NOT_TEXT = ".*(vision_tower|vision_model|multi_modal_projector).*"


def hub_layout(d):
    """Renames a multimodal checkpoint's tensors as the Hub's Gemma 3
    checkpoints name them (`language_model.model.*`; transformers >= 4.52
    saves `model.language_model.*` and reads both)."""
    from safetensors.torch import load_file
    path = os.path.join(d, "model.safetensors")
    t = load_file(path)
    save_file({k.replace("model.language_model.", "language_model.model.", 1): v
               for k, v in t.items()}, path, metadata={"format": "pt"})


def randomized(model):
    """Biases and norm weights away from their 0 / 1 init, so a family's
    use of them is tested, not hidden by the identity."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def lora_grads(peft_model, ids, mask, vocab):
    """The gradient of every LoRA tensor (by PEFT key) of the mean next-token
    cross-entropy over the unmasked positions."""
    peft_model.train()
    logits = peft_model(input_ids=ids, attention_mask=mask).logits
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), labels.reshape(-1), ignore_index=-100)
    loss.backward()
    peft_model.eval()
    # A multimodal checkpoint's text model by the names a text-only one has.
    text = {"base_model.model.model.language_model.": "base_model.model.model."}
    named = {n.replace(".default.weight", ".weight"): p for n, p in peft_model.named_parameters()
             if "lora_" in n}
    for a, b in text.items():
        named = {n.replace(a, b, 1): p for n, p in named.items()}
    return {n: p.grad.contiguous() for n, p in named.items()}


def reference_models(out):
    for name, model, targets in models():
        d = os.path.join(out, name)
        model.eval()
        model.save_pretrained(d, safe_serialization=True)
        multimodal = name.endswith("mm")
        if multimodal:
            hub_layout(d)
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, VOCAB, (2, T), generator=gen)
        mask = torch.ones(2, T, dtype=torch.long)
        mask[1, T - 3:] = 0
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                         init_lora_weights=False, fan_in_fan_out=(name == "gpt2"),
                         exclude_modules=NOT_TEXT if multimodal else None)
        peft_model = get_peft_model(model, cfg)
        peft_model.eval()
        with torch.no_grad():
            logits_lora = peft_model(input_ids=ids, attention_mask=mask).logits
        peft_model.save_pretrained(os.path.join(d, "adapter"))
        save_file(lora_grads(peft_model, ids, mask, logits_lora.shape[-1]),
                  os.path.join(d, "grads.safetensors"))
        save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
                   "logits": logits.contiguous(), "logits_lora": logits_lora.contiguous()},
                  os.path.join(d, "reference.safetensors"))


def reference_tokenizer(out):
    from tokenizers import Tokenizer, decoders, models as tm, pre_tokenizers, trainers
    d = os.path.join(out, "tok")
    os.makedirs(d, exist_ok=True)
    tok = Tokenizer(tm.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["What is LoRA? Low-rank adaptation trains small matrices.",
            "How do I learn Rust? Read the book and write programs every day.",
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face"] * 20
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = SMOLLM2_TEMPLATE
    fast.save_pretrained(d)
    convs = [
        [{"role": "user", "content": "What is LoRA?"}],
        [{"role": "user", "content": "How do I learn Rust?"},
         {"role": "assistant", "content": "Read the book.\nThen write programs every day."},
         {"role": "user", "content": "And after that? Ünïcödé too — ok"}],
        [{"role": "system", "content": "Answer briefly."},
         {"role": "user", "content": "What is LoRA?"},
         {"role": "assistant", "content": "Low-rank adaptation."}],
    ]
    cases = []
    for conv in convs:
        for gen in (False, True):
            cases.append({
                "messages": conv, "add_generation_prompt": gen,
                "text": fast.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen),
                "ids": fast.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen),
            })
    with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    reference_models(out)
    reference_tokenizer(out)
    print("wrote", out)


if __name__ == "__main__":
    main()
