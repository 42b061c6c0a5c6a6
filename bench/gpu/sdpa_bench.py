"""PyTorch scaled_dot_product_attention, dense causal, one layer (9 query heads, 3 KV heads,
head dim 64, bf16) over a whole document of N tokens, on the same GPU as attention_bench.

Usage: python3 bench/gpu/sdpa_bench.py --json PATH [--lengths 16384,65536,...]
"""
import argparse
import json

import torch
import torch.nn.functional as F


def time_sdpa(n, heads, kv_heads, head_dim, reps):
    gen = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, kv_heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, kv_heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    run = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    run()  # warm-up: kernel selection, workspace
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--lengths", default="16384,65536,131072,524288,1048576")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    a = p.parse_args()
    rows = []
    for n in [int(x) for x in a.lengths.split(",")]:
        reps = max(2, min(20, int(20 * 16384 / n * 16384 / n) + 2))
        try:
            ms = time_sdpa(n, a.heads, a.kv_heads, a.head_dim, reps)
            rows.append({"tokens": n, "sdpa_ms": ms, "reps": reps})
        except torch.OutOfMemoryError:
            rows.append({"tokens": n, "sdpa_ms": None, "reps": 0, "note": "out of memory"})
        torch.cuda.empty_cache()
        print(f"sdpa N={n}: {rows[-1]['sdpa_ms']} ms", flush=True)
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "backend_note": "F.scaled_dot_product_attention(is_causal=True, enable_gqa=True), "
        "PyTorch's default backend choice",
        "rows": rows,
    }
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
