#!/usr/bin/env python3
"""PyTorch CPU baseline for benches/cpu_layer.rs: one transformers
`MixtralSparseMoeBlock` forward (top-2 of 8 experts, SiLU GLU) on the issue-11
shapes, torch on 2 threads, median time and GFLOP/s over the same useful FLOPs
(6 * tokens * top_k * hidden * ffn).

    /work/venvs/torch/bin/python scripts/bench-torch-moe.py [--iters N] [--threads T]
"""

import argparse
import statistics
import time

import torch
from transformers.models.mixtral.configuration_mixtral import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

SHAPES = [
    ((512, 512, 1024), torch.float32),
    ((2048, 1024, 2048), torch.float32),
    ((2048, 1024, 2048), torch.bfloat16),
]


def time_block(tokens, hidden, ffn, dtype, iters):
    config = MixtralConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_local_experts=8,
        num_experts_per_tok=2,
    )
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(config).to(dtype).eval()
    x = torch.randn(1, tokens, hidden, dtype=dtype)
    with torch.no_grad():
        block(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            block(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"MixtralSparseMoeBlock, top-2 of 8, median of {args.iters}"
    )
    print("| tokens | hidden | ffn | dtype | ms | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (tokens, hidden, ffn), dtype in SHAPES:
        secs = time_block(tokens, hidden, ffn, dtype, args.iters)
        flops = 6.0 * tokens * 2 * hidden * ffn
        name = str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float32", "f32")
        print(f"| {tokens} | {hidden} | {ffn} | {name} | {secs * 1e3:.1f} | {flops / secs / 1e9:.1f} |")


if __name__ == "__main__":
    main()
