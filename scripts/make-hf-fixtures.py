#!/usr/bin/env python3
"""Writes the transformers-parity fixtures of the generate example.

For each family (Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE) it builds a tiny
random float32 model with Hugging Face transformers, saves it into
tests/fixtures/<family>/ (config.json + model.safetensors) and writes the
logits of a fixed prompt batch as logits.npy ([batch, seq, vocab], f32), the
prompt as prompt.json and transformers' greedy continuation (prompt then
NEW_TOKENS tokens per sequence) as greedy.json. tests/generate.rs checks the Rust CPU forward
against these logits (atol = rtol = 1e-4).

Needs: pip install torch transformers numpy safetensors
Run from the repository root: python3 scripts/make-hf-fixtures.py
"""

import json
import os
import shutil

import numpy as np
import torch
import transformers

OUT = os.path.join("tests", "fixtures")
PROMPT = [[1, 5, 9, 2, 7, 3, 11, 4], [6, 0, 13, 8, 2, 10, 1, 12]]
NEW_TOKENS = 4

COMMON = dict(
    vocab_size=32,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    num_experts_per_tok=2,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=64,
)


def families():
    """(folder, config) of each fixture model."""
    return [
        (
            "mixtral",
            transformers.MixtralConfig(
                **COMMON, num_local_experts=4, intermediate_size=32, rope_theta=10000.0
            ),
        ),
        (
            "qwen3_moe",
            transformers.Qwen3MoeConfig(
                **COMMON,
                num_experts=4,
                moe_intermediate_size=32,
                intermediate_size=48,
                norm_topk_prob=True,
                decoder_sparse_step=1,
                mlp_only_layers=[1],
                rope_theta=10000.0,
            ),
        ),
        (
            "olmoe",
            transformers.OlmoeConfig(
                **COMMON,
                num_experts=4,
                intermediate_size=32,
                norm_topk_prob=False,
                clip_qkv=2.0,
                rope_theta=10000.0,
            ),
        ),
        (
            "qwen2_moe",
            transformers.Qwen2MoeConfig(
                **COMMON,
                num_experts=4,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                intermediate_size=48,
                norm_topk_prob=False,
                rope_theta=10000.0,
            ),
        ),
    ]


def randomize(model, seed):
    """Gives every parameter (norm weights too) non-trivial random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def main():
    torch.manual_seed(0)
    for seed, (name, config) in enumerate(families()):
        folder = os.path.join(OUT, name)
        shutil.rmtree(folder, ignore_errors=True)
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        model.eval()
        randomize(model, 1000 + seed)
        model.save_pretrained(folder, safe_serialization=True)
        for extra in ("generation_config.json",):
            path = os.path.join(folder, extra)
            if os.path.exists(path):
                os.remove(path)
        ids = torch.tensor(PROMPT, dtype=torch.long)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits.float().numpy()
        np.save(os.path.join(folder, "logits.npy"), logits.astype("<f4"))
        with torch.no_grad():
            greedy = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=config.vocab_size - 1,
                eos_token_id=None,
            )
        with open(os.path.join(folder, "greedy.json"), "w") as f:
            json.dump(greedy.tolist(), f)
        with open(os.path.join(folder, "prompt.json"), "w") as f:
            json.dump(PROMPT, f)
        sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}
        print(name, sizes, "transformers", transformers.__version__)


if __name__ == "__main__":
    main()
