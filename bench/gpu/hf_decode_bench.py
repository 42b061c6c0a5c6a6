"""Hugging Face transformers' generate after a long prompt, on the same GPU: the reference for
decode_bench. SmolLM2-135M shapes (random weights, as hf_read_bench.py: the time does not depend
on the values), bf16, SDPA, greedy, batch 1, the default dynamic cache. Decode tokens/s is
(N - 1) / (time of generate with N new tokens - time with 1 new token): the prompt's prefill
and the first token cancel out.

Usage: python3 bench/gpu/hf_decode_bench.py --json PATH [--lengths 131072] [--new 32]
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def timed_generate(model, ids, new):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new, out.shape
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--lengths", default="131072")
    p.add_argument("--new", type=int, default=32)
    a = p.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=max(lengths) + a.new, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(0)
    try:  # transformers 5 names it dtype, 4.x torch_dtype
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                              dtype=torch.bfloat16)
    except TypeError:
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                              torch_dtype=torch.bfloat16)
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    rows = []
    with torch.inference_mode():
        warm = torch.randint(0, config.vocab_size, (1, 1024), device="cuda")
        timed_generate(model, warm, 4)
        for n in lengths:
            ids = torch.randint(0, config.vocab_size, (1, n), device="cuda")
            torch.cuda.reset_peak_memory_stats()
            one = timed_generate(model, ids, 1)
            many = timed_generate(model, ids, a.new)
            decode_s = many - one
            rows.append({"prompt_tokens": n, "new_tokens": a.new, "generate_1_s": one,
                         "generate_n_s": many,
                         "decode_tokens_per_s": (a.new - 1) / decode_s if decode_s > 0 else None,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
            print(f"hf generate after {n}: {rows[-1]}", flush=True)
            torch.cuda.empty_cache()
    import transformers
    with open(a.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "transformers": transformers.__version__, "attention": "sdpa",
                   "dtype": "bfloat16", "batch": 1, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
