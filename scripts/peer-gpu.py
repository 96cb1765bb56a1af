#!/usr/bin/env python3
"""Runs ../shared/bench/peer_hf.py on a CUDA device in bf16 (the peer itself
loads f32 on the CPU): tensors are created on the GPU by default, and the
model is loaded in bf16 with PyTorch's fused SDPA attention. Same arguments
and JSON line as the peer. Used by scripts/bench-gpu.sh."""
import os
import runpy
import sys

import torch
import transformers

peer = os.environ.get("PEER") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench", "peer_hf.py")
torch.set_default_device(os.environ.get("PEER_DEVICE", "cuda"))
_load = transformers.AutoModelForCausalLM.from_pretrained


def load_bf16(*args, **kwargs):
    kwargs["dtype"] = torch.bfloat16
    kwargs.setdefault("attn_implementation", "sdpa")
    return _load(*args, **kwargs)


transformers.AutoModelForCausalLM.from_pretrained = load_bf16
sys.argv = [peer] + sys.argv[1:]
runpy.run_path(peer, run_name="__main__")
