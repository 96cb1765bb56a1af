#!/usr/bin/env python3
"""Loads a base model and a LoRA adapter (written by lorastream) with PEFT and
writes its logits for the reference inputs.

usage: peft_logits.py MODEL_DIR ADAPTER_DIR REFERENCE.safetensors OUT.safetensors
"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def main():
    model_dir, adapter_dir, ref, out = sys.argv[1:5]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    r = load_file(ref)
    with torch.no_grad():
        logits = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
    save_file({"logits": logits.contiguous()}, out)


if __name__ == "__main__":
    main()
