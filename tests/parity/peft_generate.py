#!/usr/bin/env python3
"""Greedy answers of a base model with a LoRA adapter applied unmerged by PEFT,
in the dtype given, for the serving parity test.

usage: peft_generate.py MODEL_DIR ADAPTER_DIR DTYPE N_TOKENS PROMPTS.json OUT.json

PROMPTS.json: a list of user messages. For each, the chat template with the
generation prompt, then N_TOKENS greedy steps (stopping at the model's EOS as
lorastream does); OUT.json: per prompt the new token ids, the text, and the
log-softmax of the chosen token at each step.
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    model_dir, adapter_dir, dtype, n, prompts, out = sys.argv[1:7]
    kind = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=kind)
    model = PeftModel.from_pretrained(base, adapter_dir) if adapter_dir != "-" else base
    model.eval()
    eos = {tok.eos_token_id} | set(
        base.config.eos_token_id if isinstance(base.config.eos_token_id, list)
        else [base.config.eos_token_id])
    results = []
    for p in json.load(open(prompts)):
        ids = tok.apply_chat_template([{"role": "user", "content": p}],
                                      add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        new, logprobs = [], []
        with torch.no_grad():
            for _ in range(int(n)):
                logits = model(input_ids=ids).logits[0, -1].float()
                t = int(torch.argmax(logits))
                if t in eos:
                    break
                logprobs.append(float(torch.log_softmax(logits, -1)[t]))
                new.append(t)
                ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
        results.append({"ids": new, "text": tok.decode(new), "logprobs": logprobs})
    json.dump(results, open(out, "w"))


if __name__ == "__main__":
    main()
