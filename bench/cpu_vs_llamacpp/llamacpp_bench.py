#!/usr/bin/env python3
"""llama.cpp's side of bench/cpu_vs_llamacpp, through llama-cpp-python's high-level Llama class.

  tokenize: writes the token ids of the real text (llama.cpp's own tokenizer, no BOS, special
            tokens not parsed) so that our bench (--tokens FILE) reads exactly the same ids.
  measure:  prefill and decode tokens/s, median of --reps, written as JSON.

Method (the same as ours): for each size N, one context of n_ctx = N + decode tokens (llama.cpp
rounds it up to a multiple of 256), n_batch = n_ubatch = 512 (llama-cpp-python's default, and
llama.cpp's default ubatch), n_threads = n_threads_batch = --threads, flash attention off
(llama-cpp-python's default), f16 KV cache. Prefill: Llama.reset() then Llama.eval(first N ids),
which computes the last token's logits only; wall time. Decode: greedy argmax of the last
logits, eval of that one token, repeated --decode-tokens times; wall time of the loop. The
llama_perf counters (t_p_eval_ms, t_eval_ms) of the last repetition are recorded beside them,
and the process CPU time of each repetition (OpenMP workers spin, so it errs high).
Sizes beyond the model's trained context (8,192 for SmolLM2) are "not possible": llama.cpp has
no way to read them in one context without context extension.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def default_corpus():
    # The same files, in the same order, as longread_cpu_bench's default corpus.
    files = sorted(
        f for f in glob.glob("/usr/share/common-licenses/*")
        if os.path.isfile(f) and not os.path.islink(f))
    return files


def sizes(text):
    return [int(s) for s in text.split(",") if s]


def cmd_tokenize(args):
    files = args.text or default_corpus()
    data = b"".join(open(f, "rb").read() for f in files)
    vocab = Llama(model_path=args.model, vocab_only=True, verbose=False)
    ids = vocab.tokenize(data, add_bos=False, special=False)
    with open(args.out, "w") as f:
        f.write(" ".join(str(i) for i in ids) + "\n")
    print(f"{len(ids)} tokens from {len(files)} files -> {args.out}")


def load_ids(path):
    with open(path) as f:
        return [int(t) for t in f.read().split()]


def prefix(ids, n):
    return [ids[i % len(ids)] for i in range(n)]


def perf(llm):
    p = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return {"t_p_eval_ms": p.t_p_eval_ms, "n_p_eval": p.n_p_eval,
            "t_eval_ms": p.t_eval_ms, "n_eval": p.n_eval}


def run_size(args, ids, n, decode):
    n_ctx = n + (args.decode_tokens if decode else 0)
    llm = Llama(model_path=args.model, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    n_vocab = llm.n_vocab()
    prompt = prefix(ids, n)
    llm.reset()
    llm.eval(prompt[:16])  # warm-up: touches the weights, builds the compute graph
    series = lambda: {"reps_tok_s": [], "reps_seconds": [], "reps_cpu_seconds": []}
    out = {"tokens": n, "n_ctx": llm.n_ctx(), "prefill": series()}
    if decode:
        out["decode"] = series()
    for rep in range(args.reps):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        c0, t0 = time.process_time(), time.perf_counter()
        llm.eval(prompt)
        p = time.perf_counter() - t0
        out["prefill"]["reps_cpu_seconds"].append(time.process_time() - c0)
        out["prefill"]["reps_seconds"].append(p)
        out["prefill"]["reps_tok_s"].append(n / p)
        line = f"  llama.cpp {n:6d}: prefill {n / p:8.1f} tok/s"
        if decode:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(args.decode_tokens):
                logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
                llm.eval([int(np.argmax(logits))])
            d = time.perf_counter() - t0
            out["decode"]["reps_cpu_seconds"].append(time.process_time() - c0)
            out["decode"]["reps_seconds"].append(d)
            out["decode"]["reps_tok_s"].append(args.decode_tokens / d)
            line += f", decode {args.decode_tokens / d:.2f} tok/s"
        out["llama_perf_last_rep"] = perf(llm)
        print(line, flush=True)
    for key in ("prefill", "decode"):
        if key in out:
            out[key]["median_tok_s"] = statistics.median(out[key]["reps_tok_s"])
    del llm
    return out


def cmd_measure(args):
    ids = load_ids(args.tokens)
    # A vocab-only model reports n_ctx_train 0; the GGUF metadata has the trained context.
    meta = Llama(model_path=args.model, vocab_only=True, verbose=False).metadata
    n_ctx_train = int(next(v for k, v in meta.items() if k.endswith(".context_length")))
    decode_set = set(sizes(args.decode_after))
    results, not_possible = [], []
    load_start = " ".join(open("/proc/loadavg").read().split()[:3])
    for n in sorted(set(sizes(args.prefill)) | decode_set):
        decode = n in decode_set
        if n + (args.decode_tokens if decode else 0) > n_ctx_train:
            not_possible.append(n)
            continue
        results.append(run_size(args, ids, n, decode))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    doc = {
        "bench": "cpu-llamacpp",
        "device": {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "engine": "llama.cpp via llama-cpp-python " + llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "settings": {"n_batch": 512, "n_ubatch": 512, "flash_attn": False, "kv_cache": "f16",
                     "n_threads": args.threads, "n_threads_batch": args.threads,
                     "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset: spinning)"),
                     "timing": "wall clock around Llama.eval (prefill: whole prompt, last-token "
                               "logits only; decode: greedy argmax + one-token eval per token)"},
        "model": os.path.basename(args.model),
        "n_ctx_train": n_ctx_train,
        "tokens_source": "token ids from " + args.tokens, "corpus_tokens": len(ids),
        "load_average_at_start": load_start,
        "load_average_at_end": " ".join(open("/proc/loadavg").read().split()[:3]),
        "decode_tokens": args.decode_tokens,
        "dense": results,
        "not_possible": [{"tokens": n, "reason": f"beyond the model's trained context of "
                          f"{n_ctx_train} tokens"} for n in not_possible],
    }
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.json}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenize")
    t.add_argument("--model", required=True)
    t.add_argument("--text", nargs="*", help="text files (default: the Debian license texts)")
    t.add_argument("--out", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", required=True)
    m.add_argument("--tokens", required=True)
    m.add_argument("--threads", type=int, default=os.cpu_count())
    m.add_argument("--prefill", default="512,2048,8000")
    m.add_argument("--decode-after", default="512,8000")
    m.add_argument("--decode-tokens", type=int, default=64)
    m.add_argument("--reps", type=int, default=3)
    m.add_argument("--json", required=True)
    args = ap.parse_args()
    {"tokenize": cmd_tokenize, "measure": cmd_measure}[args.cmd](args)


if __name__ == "__main__":
    main()
