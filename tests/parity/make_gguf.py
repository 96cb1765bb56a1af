#!/usr/bin/env python3
"""GGUF fixtures and transformers' own GGUF loading, for the Rust import tests.

usage: make_gguf.py OUT_DIR [REAL_GGUF]

Writes OUT_DIR/tiny.gguf with the `gguf` package: a tiny random Llama model
(GQA, untied output) whose tensors use every type the importer reads (F32, F16,
BF16, Q8_0, Q4_0, Q4_1 quantized by gguf-py; Q4_K, Q5_K, Q6_K as random blocks
with sane scales) in llama.cpp's names and Q/K row order, and a byte-level BPE
tokenizer (trained here) with a chat template. Then loads the file the way
transformers does (from_pretrained(gguf_file=...)) and writes
  OUT_DIR/reference.safetensors   input_ids [2, T], logits [2, T, V]
  OUT_DIR/tokens.json             {"strings": [...], "ids": [[...]]} (no special tokens added)
Then the same for OUT_DIR/qwen2.gguf (q/k/v biases, tied head),
OUT_DIR/qwen3.gguf (q/k norms) and OUT_DIR/phi3.gguf (fused projections), f32 and f16 tensors in llama.cpp's names,
rows unpermuted: OUT_DIR/reference-<arch>.safetensors.
With REAL_GGUF (SmolLM2's Q4_1 file): OUT_DIR/real.json with the prompt ids and
the greedy continuation transformers generates from that file.
Test-only: needs torch, transformers, gguf, tokenizers.
"""
import json
import math
import os
import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q, GGUFWriter, quants
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "lorastream keeps a language model learning from the web.",
    "It crawls questions and answers, trains a LoRA adapter on each stream,",
    "measures forgetting on every earlier stream, and serves the best adapter.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}",
    "Ünïcödé: naïve café, 東京, emoji 😀, tabs\tand  double  spaces\n",
] * 20
STRINGS = [
    "Hello world", " leading space", "trailing space ", "double  space", "tab\tand\nnewline",
    "lorastream learns", "What is LoRA?", "café naïve", "東京タワー", "emoji 😀👍",
    "numbers 12345 and 3.14", "<|im_start|>user\nhi<|im_end|>", "CAPITALS and MiXeD",
    "punctuation!?.,;:", "a" * 40, "", " ", "unknown words xyzzy plugh", "it's don't won't",
    "https://example.com/path?q=1",
]
H, HEADS, KV, FF, LAYERS, CTX = 256, 4, 2, 512, 2, 128


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    return tokens, merges


def permute(w, n_head):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(qtype, rows, cols, rng):
    """Random K-quant blocks whose f16 scales are small and finite."""
    block, size = {Q.Q4_K: (256, 144), Q.Q5_K: (256, 176), Q.Q6_K: (256, 210)}[qtype]
    n = rows * cols // block
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    scale = lambda k: (rng.uniform(0.0005, 0.002, size=(n, k))).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:
        b[:, 208:210] = scale(1)
        b[:, 192:208] = rng.integers(-8, 8, size=(n, 16)).astype(np.int8).view(np.uint8)
    else:
        b[:, 0:4] = scale(2)
    return b.reshape(rows, cols // block * size)


def gguf_writer(out, arch, c, name=None):
    """A writer of OUT/<name or arch>.gguf with the sizes of transformers config `c`."""
    w = GGUFWriter(os.path.join(out, f"{name or arch}.gguf"), arch)
    w.add_name(f"tiny {arch}")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    return w


def write_vocab(w, tokens, merges):
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)


CPP_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "self_attn.qkv_proj": "attn_qkv",
             "mlp.gate_up_proj": "ffn_up"}


def cpp_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, param = rest.rsplit(".", 1)
    return f"blk.{layer}.{CPP_NAMES[module]}.{param}"


def family_gguf(out, arch, model, tokens, merges):
    """`model` as llama.cpp's converter writes a Qwen file (no q/k permutation),
    then transformers' logits from that file."""
    c = model.config
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    w = gguf_writer(out, arch, c)
    if getattr(c, "head_dim", None):
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    write_vocab(w, tokens, merges)
    for i, (name, t) in enumerate(model.state_dict().items()):
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        t = t.float().numpy()
        w.add_tensor(cpp_name(name), t.astype(np.float16 if t.ndim == 2 and i % 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = AutoModelForCausalLM.from_pretrained(out, gguf_file=f"{arch}.gguf", dtype=torch.float32).eval()
    ids = torch.randint(3, len(tokens), (2, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits = m(input_ids=ids).logits
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(out, f"reference-{arch}.safetensors"))


def families(out, tokens, merges):
    small = dict(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX,
                 rms_norm_eps=1e-6, rope_theta=1e6)
    family_gguf(out, "qwen2", Qwen2ForCausalLM(Qwen2Config(**small, tie_word_embeddings=True)),
                tokens, merges)
    # head_dim 128 apart from hidden / heads (transformers' loader assumes
    # Qwen3's 128; llama.cpp writes attention.key_length).
    family_gguf(out, "qwen3", Qwen3ForCausalLM(Qwen3Config(**small, head_dim=128,
                tie_word_embeddings=False)), tokens, merges)
    # Phi-3: q/k/v and gate/up fused (attn_qkv, ffn_up), untied head.
    family_gguf(out, "phi3", Phi3ForCausalLM(Phi3Config(**small, pad_token_id=2, bos_token_id=1,
                eos_token_id=2, original_max_position_embeddings=CTX)), tokens, merges)


def own_reference_gguf(out, name, arch, model, tokens, merges, extra, heads=None):
    """`model` as llama.cpp's converter writes it to OUT/<name>.gguf (f32
    tensors; q/k rows permuted for `heads` = (heads, kv heads); `extra(w)`
    adds what this model needs), with the model's own logits as the
    reference: transformers' GGUF loader ignores the rope tensors these
    files carry."""
    c = model.config
    w = gguf_writer(out, arch, c, name)
    write_vocab(w, tokens, merges)
    extra(w)
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        t = t.float().numpy()
        if heads and key.endswith("q_proj.weight"):
            t = permute(t, heads[0])
        elif heads and key.endswith("k_proj.weight"):
            t = permute(t, heads[1])
        w.add_tensor(cpp_name(key), t.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ids = torch.randint(3, len(tokens), (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(out, f"reference-{name}.safetensors"))


def llama3_gguf(out, tokens, merges):
    """A Llama 3.1-style model (rope_scaling llama3): llama.cpp stores the
    scaling as `rope_freqs`, one divisor per rotary frequency."""
    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    c = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=CTX, rope_theta=100.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, rope_scaling=scaling)
    divisors = []
    for f in 1.0 / (100.0 ** (np.arange(0, 16, 2) / 16)):  # LlamaModel.generate_extra_tensors
        wavelen = 2 * math.pi / f
        if wavelen < 64 / 4.0:
            divisors.append(1.0)
        elif wavelen > 64 / 1.0:
            divisors.append(4.0)
        else:
            smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
            divisors.append(1 / ((1 - smooth) / 4.0 + smooth))

    def extra(w):
        w.add_rope_dimension_count(16)
        w.add_tensor("rope_freqs.weight", np.array(divisors, dtype=np.float32))
    own_reference_gguf(out, "llama3", "llama", LlamaForCausalLM(c), tokens, merges, extra, (4, 2))


def phi4_gguf(out, tokens, merges):
    """A Phi-4-mini-style model: LongRoPE extending 32 positions to 64 and
    the leading 12 of each head's 16 dimensions rotating; llama.cpp stores
    the factors as `rope_factors_short` / `rope_factors_long`, the original
    context and attention factor as metadata, the rotating dimensions as
    `rope.dimension_count`."""
    short, long = [1.0, 1.2, 1.5, 2.0, 3.0, 4.0], [1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
    c = Phi3Config(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=64, original_max_position_embeddings=32,
                   partial_rotary_factor=0.75, tie_word_embeddings=True, pad_token_id=2,
                   bos_token_id=1, eos_token_id=2, rope_theta=10000.0, rms_norm_eps=1e-6,
                   rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long})

    def extra(w):
        w.add_rope_dimension_count(12)
        w.add_rope_scaling_orig_ctx_len(32)
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(2) / math.log(32)))
        w.add_tensor("rope_factors_long.weight", np.array(long, dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(short, dtype=np.float32))
    model = Phi3ForCausalLM(c)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" in key:
                p.add_(torch.randn_like(p) * 0.1)
    own_reference_gguf(out, "phi4", "phi3", model, tokens, merges, extra)


def spm_vocab():
    """A SentencePiece-style vocabulary as llama.cpp stores one (Llama 2,
    Mistral, TinyLlama): <unk> <s> </s>, the 256 byte tokens, then pieces with
    ▁ for spaces, scored by rank; no merges (readers rebuild them)."""
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    n = len(specials)
    # Scores by rank, shuffled a little (as real vocabularies' are not in id
    # order), so the merges readers rebuild depend on the scores.
    rank = np.random.default_rng(11).permutation(len(tokens) - n) // 8 * 8 + np.arange(len(tokens) - n) % 8
    scores = [0.0] * n + [-float(r) for r in rank]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - n)
    return tokens, scores, types


def write_spm_vocab(w, tokens, scores, types):
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def spm_gguf(out):
    """A tiny Llama file with a SentencePiece vocabulary, and the token ids
    transformers' GGUF tokenizer gives for STRINGS."""
    tokens, scores, types = spm_vocab()
    c = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=CTX, rms_norm_eps=1e-6, tie_word_embeddings=True)
    model = LlamaForCausalLM(c)
    w = GGUFWriter(os.path.join(out, "spm.gguf"), "llama")
    w.add_context_length(CTX)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    write_spm_vocab(w, tokens, scores, types)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        t = t.float().numpy()
        if name.endswith("q_proj.weight"):
            t = permute(t, 4)
        elif name.endswith("k_proj.weight"):
            t = permute(t, 2)
        w.add_tensor(cpp_name(name), t.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(out, gguf_file="spm.gguf")
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in STRINGS]
    with open(os.path.join(out, "tokens-spm.json"), "w") as f:
        json.dump({"strings": STRINGS, "ids": ids,
                   "decoded": [tok.decode(i) for i in ids]}, f)


GEMMA_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
               "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def gemma_gguf(out, arch, model):
    """`model` as llama.cpp's converter writes Gemma 2/3 (norm weights as 1 + w,
    a SentencePiece vocabulary without a space prefix), then transformers'
    logits and token ids from that file."""
    tokens, scores, types = spm_vocab()
    c = model.config
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    w = gguf_writer(out, arch, c)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    write_spm_vocab(w, tokens, scores, types)
    w.add_add_space_prefix(False)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if "norm" in name:
            t = t + 1  # llama.cpp's Gemma converter stores 1 + w
        parts = name.split(".")
        if len(parts) > 4 and parts[3] in GEMMA_NORMS:
            cpp = f"blk.{parts[2]}.{GEMMA_NORMS[parts[3]]}.{parts[4]}"
        else:
            cpp = cpp_name(name)
        w.add_tensor(cpp, t.float().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = AutoModelForCausalLM.from_pretrained(out, gguf_file=f"{arch}.gguf", dtype=torch.float32,
                                             attn_implementation="eager").eval()
    ids = torch.randint(3, len(tokens), (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        logits = m(input_ids=ids).logits
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(out, f"reference-{arch}.safetensors"))
    tok = AutoTokenizer.from_pretrained(out, gguf_file=f"{arch}.gguf")
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in STRINGS]
    with open(os.path.join(out, f"tokens-{arch}.json"), "w") as f:
        json.dump({"strings": STRINGS, "ids": ids, "decoded": [tok.decode(i) for i in ids]}, f)


def gemmas(out):
    vocab = len(spm_vocab()[0])
    # head_dim 256 = query_pre_attn_scalar (transformers' GGUF loader keeps its
    # defaults there); windows of 4 positions of the 12.
    small = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=256, max_position_embeddings=CTX, sliding_window=4,
                 attn_implementation="eager")
    gemma_gguf(out, "gemma2", Gemma2ForCausalLM(Gemma2Config(**small, num_hidden_layers=2)))
    # Six layers: five sliding (local rotary theta) and a global one.
    gemma_gguf(out, "gemma3", Gemma3ForCausalLM(Gemma3TextConfig(**small, num_hidden_layers=6)))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    tokens, merges = tokenizer()
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=H, intermediate_size=FF,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV,
                      max_position_embeddings=CTX, rope_theta=10000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=False)
    sd = LlamaForCausalLM(cfg).state_dict()

    path = os.path.join(out, "tiny.gguf")
    w = GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_context_length(CTX)
    w.add_embedding_length(H)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(H // HEADS)
    write_vocab(w, tokens, merges)
    w.add_unk_token_id(0)

    # llama.cpp name, HF name, ggml type
    plan = [("token_embd.weight", "model.embed_tokens.weight", Q.Q8_0),
            ("output_norm.weight", "model.norm.weight", Q.F32),
            ("output.weight", "lm_head.weight", Q.F16)]
    types = [
        {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q4_K, "attn_output": Q.Q5_K,
         "ffn_gate": Q.Q6_K, "ffn_up": Q.F16, "ffn_down": Q.BF16},
        {"attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q6_K, "attn_output": Q.Q8_0,
         "ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_1, "ffn_down": Q.F32},
    ]
    hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
    for i in range(LAYERS):
        plan.append((f"blk.{i}.attn_norm.weight", f"model.layers.{i}.input_layernorm.weight", Q.F32))
        plan.append((f"blk.{i}.ffn_norm.weight", f"model.layers.{i}.post_attention_layernorm.weight", Q.F32))
        for g, h in hf.items():
            plan.append((f"blk.{i}.{g}.weight", f"model.layers.{i}.{h}.weight", types[i][g]))
    for gname, hname, qt in plan:
        t = sd[hname].float()
        if "norm" in hname:
            t = t + torch.rand_like(t) * 0.5  # not all ones
        t = t.numpy()
        if gname.endswith("attn_q.weight"):
            t = permute(t, HEADS)
        elif gname.endswith("attn_k.weight"):
            t = permute(t, KV)
        if qt in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            w.add_tensor(gname, random_blocks(qt, t.shape[0], t.shape[1], rng), raw_dtype=qt)
        elif qt == Q.F32:
            w.add_tensor(gname, t.astype(np.float32))
        elif qt == Q.F16:
            w.add_tensor(gname, t.astype(np.float16))
        else:
            w.add_tensor(gname, quants.quantize(t.astype(np.float32), qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out, gguf_file="tiny.gguf")
    ids = torch.randint(3, len(tokens), (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"strings": STRINGS,
                   "ids": [tok(s, add_special_tokens=False)["input_ids"] for s in STRINGS]}, f)

    families(out, tokens, merges)
    llama3_gguf(out, tokens, merges)
    phi4_gguf(out, tokens, merges)
    spm_gguf(out)
    gemmas(out)

    if len(sys.argv) > 2:
        real = sys.argv[2]
        d, name = os.path.split(real)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
        prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            g = model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False,
                               eos_token_id=2, pad_token_id=2)
        with open(os.path.join(out, "real.json"), "w") as f:
            json.dump({"prompt": p, "generated": g[0, len(p):].tolist()}, f)


if __name__ == "__main__":
    main()
