#!/usr/bin/env python3
"""Reads a GGUF LoRA file with the `gguf` package (llama.cpp's own reader) and
compares it with the PEFT adapter it came from: the metadata llama.cpp
requires, and every tensor, after the layout change llama.cpp's converters
make (tensor names; Llama's q/k rows permuted for its rotary layout, on B).
Writes {"tensors": n, "max_abs_diff": d, "alpha": a, "arch": s} as JSON.

usage: gguf_lora.py FILE.gguf ADAPTER_DIR MODEL_DIR OUT.json
"""
import json
import re
import sys

import numpy as np
from gguf import GGUFReader
from safetensors.numpy import load_file

LLAMA = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def permute(w, n_head):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else float(v[0])


def main():
    gguf_file, adapter_dir, model_dir, out = sys.argv[1:5]
    reader = GGUFReader(gguf_file)
    assert field(reader, "general.type") == "adapter", "general.type"
    assert field(reader, "adapter.type") == "lora", "adapter.type"
    arch = field(reader, "general.architecture")
    cfg = json.load(open(f"{model_dir}/config.json"))
    acfg = json.load(open(f"{adapter_dir}/adapter_config.json"))
    alpha = field(reader, "adapter.lora.alpha")
    assert abs(alpha - acfg["lora_alpha"]) < 1e-6, (alpha, acfg["lora_alpha"])
    ours = {t.name: np.array(t.data) for t in reader.tensors}
    peft = load_file(f"{adapter_dir}/adapter_model.safetensors")
    worst, n = 0.0, 0
    for key, w in peft.items():
        m = re.fullmatch(r"base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight", key)
        assert m, key
        layer, module, which = m.groups()
        if which == "B" and module == "self_attn.q_proj":
            w = permute(w, cfg["num_attention_heads"])
        if which == "B" and module == "self_attn.k_proj":
            w = permute(w, cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
        name = f"blk.{layer}.{LLAMA[module]}.weight.lora_{which.lower()}"
        got = ours.pop(name)
        assert got.shape == w.shape, (name, got.shape, w.shape)
        worst = max(worst, float(np.abs(got - w).max()))
        n += 1
    assert not ours, f"tensors with no PEFT counterpart: {sorted(ours)}"
    json.dump({"tensors": n, "max_abs_diff": worst, "alpha": alpha, "arch": arch}, open(out, "w"))


if __name__ == "__main__":
    main()
