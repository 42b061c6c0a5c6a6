"""Hugging Face transformers reading one document in one forward pass (prefill, no LM head) on
the same GPU: SmolLM2-135M shapes (random weights, bf16, SDPA attention), tokens/s and peak GPU
memory at each length. The comparison point for forward_bench (our segment forward). With
--batch B, B documents of each length in one forward pass (tokens/s counts all B x N tokens).

Usage: python3 bench/gpu/hf_read_bench.py --json PATH [--lengths 8192,32768,131072] [--batch 1]
"""
import argparse
import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--lengths", default="8192,32768,131072")
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=max(lengths), rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(0)
    try:  # transformers 5 names it dtype, 4.x torch_dtype
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                              dtype=torch.bfloat16)
    except TypeError:
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                              torch_dtype=torch.bfloat16)
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    print("attention:", model.config._attn_implementation, flush=True)
    rows = []
    for n in lengths:
        ids = torch.randint(0, config.vocab_size, (a.batch, n), device="cuda")
        try:
            with torch.inference_mode():
                model.model(input_ids=ids, use_cache=False)  # warm-up
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(3):
                    start = torch.cuda.Event(enable_timing=True)
                    stop = torch.cuda.Event(enable_timing=True)
                    start.record()
                    model.model(input_ids=ids, use_cache=False)
                    stop.record()
                    stop.synchronize()
                    times.append(start.elapsed_time(stop))
            ms = sorted(times)[1]
            rows.append({"tokens": n, "documents": a.batch, "ms": ms,
                         "tokens_per_s": a.batch * n / (ms / 1e3),
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
        except torch.OutOfMemoryError:
            rows.append({"tokens": n, "ms": None, "note": "out of memory"})
        torch.cuda.empty_cache()
        print(f"hf N={n}: {rows[-1]}", flush=True)
    import transformers
    with open(a.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "transformers": transformers.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
