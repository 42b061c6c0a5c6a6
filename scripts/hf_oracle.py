#!/usr/bin/env python3
"""Reference logits for the default model, from Hugging Face transformers on CPU in fp32.

Writes the fixture that the C++ model test compares against (tests/fixtures/oracle/README.md
describes the format). The weights are the GGUF file's own, dequantized, so the oracle and our
engine see identical numbers and only the arithmetic differs.

  hf_oracle.py --gguf models/X.gguf --out tests/fixtures/oracle/x.json          torch (the oracle)
  hf_oracle.py --gguf models/X.gguf --out /tmp/np.json --backend numpy          no torch needed
  hf_oracle.py --compare A.json B.json                                          the CI metric

The numpy backend is an independent fp32 implementation of the same network. It exists to debug
this script where torch cannot be installed, and to cross-check the torch fixture.
"""

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
import traceback

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORMAT_VERSION = 1
TOP_K = 32
SUBSET_SIZE = 256
SUBSET_SEED = 20251125
NEW_TOKENS = 64
SIGNIFICANT_DIGITS = 7

# Each prompt exercises something different: the chat template's special tokens, plain prose,
# code indentation, and digits after whitespace (where a ByteLevel-only tokenizer goes wrong).
PROMPTS = [
    (
        "chat_summarize",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nSummarize: The lighthouse on the northern cape was built in"
        " 1874 to guide fishing boats through a channel full of hidden rocks. For more than a"
        " century its keepers lived in a small stone house beside the tower, trimming the wick"
        " every night and writing the weather into thick logbooks. When the light was automated"
        " in 1991, the last keeper stayed on as a volunteer guide.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (
        "prose",
        "Rivers shape the land slowly. Over thousands of years, water carries sand and small"
        " stones downstream, cutting valleys into hills and building wide plains where the"
        " current slows. Farmers have always settled near these plains because the soil is rich"
        " and easy to work. Yet the same river that feeds the fields can also flood them, so every"
        " generation has to learn again",
    ),
    (
        "code",
        "def fibonacci(n):\n"
        '    """Return the first n Fibonacci numbers."""\n'
        "    a, b = 0, 1\n"
        "    result = []\n"
        "    for _ in range(n):\n"
        "        result.append(a)\n"
        "        a, b = b, a + b\n"
        "    return result\n"
        "\n\n"
        "def is_prime(k):\n"
        "    if k < 2:\n"
        "        return False\n",
    ),
    (
        "numbered_list",
        "Steps to bake bread at home:\n\n"
        "   1. Mix 500 g of flour with 10 g of salt.\n"
        "   2. Add 7 g of dry yeast and 350 ml of warm water.\n"
        "   3. Knead for 10 minutes, then let it rest for 1 hour.\n"
        "   4. Shape the loaf and bake at 230 degrees for 35 minutes.\n\n"
        "   5.",
    ),
]


def log(msg):
    print(f"[hf_oracle {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rounded(values):
    """Floats with SIGNIFICANT_DIGITS digits, so the JSON stays small and diffable."""
    return [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in np.asarray(values, np.float64).ravel()]


# --- GGUF: metadata, dequantized weights in Hugging Face layout, tokenizer --------------------


def read_gguf(path):
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            meta[key] = field.contents()
        elif not key.startswith("GGUF."):
            meta[key] = field.contents()
    return reader, meta


def model_dims(meta):
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"general.architecture is {arch!r}; this oracle handles llama only")
    n_embd = int(meta["llama.embedding_length"])
    n_head = int(meta["llama.attention.head_count"])
    return {
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": n_embd,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", n_head)),
        "head_dim": int(meta.get("llama.rope.dimension_count", n_embd // n_head)),
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta["llama.context_length"]),
        "bos_token_id": int(meta.get("tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(meta.get("tokenizer.ggml.eos_token_id", 2)),
    }


def unpermute_rows(w, n_head):
    """Inverts llama.cpp's convert-time Q/K row interleave (rotary pairs become halves again).

    The converter maps rows as reshape(n_head, 2, d/2, ...).swapaxes(1, 2), so the inverse reads
    the rows as (n_head, d/2, 2, ...) and swaps back.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def dequantized_state(reader, dims):
    """All tensors as fp32 numpy arrays under Hugging Face LlamaForCausalLM names."""
    import gguf

    state = {}
    for t in reader.tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        name = t.name.removesuffix(".weight")
        if name == "token_embd":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm":
            hf = "model.norm.weight"
        elif name == "output":
            hf = "lm_head.weight"
        else:
            _, layer, kind = name.split(".", 2)
            if kind == "attn_q":
                w = unpermute_rows(w, dims["num_attention_heads"])
            elif kind == "attn_k":
                w = unpermute_rows(w, dims["num_key_value_heads"])
            hf = f"model.layers.{layer}.{HF_NAMES[kind]}.weight"
        state[hf] = np.ascontiguousarray(w)
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def reference_tokenizer(meta):
    """SmolLM2's real tokenizer rebuilt from the GGUF vocabulary: digits split one by one, then
    byte-level BPE (the GGUF's tokenizer.ggml.pre = "smollm" names this pair)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


# --- Backends: prefill(ids) -> (logits [T, V], state); step(state, token) -> logits [V] -------


class NumpyLlama:
    """Plain fp32 llama forward with a KV cache; Hugging Face's rotate-half RoPE convention."""

    def __init__(self, state, dims):
        self.w = state
        self.d = dims
        hd = dims["head_dim"]
        self.inv_freq = (1.0 / dims["rope_theta"] ** (np.arange(0, hd, 2) / hd)).astype(np.float32)

    def _norm(self, x, weight):
        var = np.mean(x * x, axis=-1, keepdims=True)
        return (x / np.sqrt(var + np.float32(self.d["rms_norm_eps"]))) * weight

    def _rope(self, x, positions):
        ang = positions[:, None].astype(np.float32) * self.inv_freq[None, :]
        cos = np.cos(np.concatenate([ang, ang], -1))[None]
        sin = np.sin(np.concatenate([ang, ang], -1))[None]
        half = x.shape[-1] // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def _run(self, ids, cache):
        d, w = self.d, self.w
        hd, nh, nkv = d["head_dim"], d["num_attention_heads"], d["num_key_value_heads"]
        start = cache["len"]
        positions = np.arange(start, start + len(ids))
        x = w["model.embed_tokens.weight"][np.asarray(ids)]
        for i in range(d["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._norm(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(-1, nh, hd).transpose(1, 0, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(-1, nkv, hd).transpose(1, 0, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(-1, nkv, hd).transpose(1, 0, 2)
            q, k = self._rope(q, positions), self._rope(k, positions)
            if i in cache["k"]:
                k = np.concatenate([cache["k"][i], k], 1)
                v = np.concatenate([cache["v"][i], v], 1)
            cache["k"][i], cache["v"][i] = k, v
            k = np.repeat(k, nh // nkv, axis=0)
            v = np.repeat(v, nh // nkv, axis=0)
            scores = (q @ k.transpose(0, 2, 1)) / np.float32(np.sqrt(hd))
            future = np.arange(k.shape[1])[None, :] > positions[:, None]
            scores = np.where(future[None], np.float32(-np.inf), scores)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = ((scores / scores.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2)
            x = x + attn.reshape(len(ids), -1) @ w[p + "self_attn.o_proj.weight"].T
            h = self._norm(x, w[p + "post_attention_layernorm.weight"])
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * up) @ w[p + "mlp.down_proj.weight"].T
        cache["len"] = start + len(ids)
        x = self._norm(x, w["model.norm.weight"])
        return (x @ w["lm_head.weight"].T).astype(np.float32)

    def prefill(self, ids):
        cache = {"len": 0, "k": {}, "v": {}}
        return self._run(ids, cache), cache

    def step(self, cache, token):
        return self._run([token], cache)[0]


class TorchLlama:
    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = model

    def prefill(self, ids):
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=True)
        return out.logits[0].float().numpy(), {"past": out.past_key_values, "len": len(ids)}

    def step(self, state, token):
        torch = self.torch
        with torch.no_grad():
            out = self.model(
                input_ids=torch.tensor([[token]], dtype=torch.long),
                position_ids=torch.tensor([[state["len"]]], dtype=torch.long),
                past_key_values=state["past"],
                use_cache=True,
            )
        state["past"], state["len"] = out.past_key_values, state["len"] + 1
        return out.logits[0, -1].float().numpy()

    def full_logits(self, ids):
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
        return out.logits[0].float().numpy()


def load_torch_model(gguf_path, state, dims, record):
    """transformers' own GGUF loader; falls back to a hand-built LlamaConfig + our state dict
    when that loader fails or its weights differ from our dequantization."""
    import torch
    import transformers

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = None
    try:
        log("loading with transformers' GGUF loader")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(gguf_path)),
            gguf_file=os.path.basename(gguf_path),
            dtype=torch.float32,
            attn_implementation="eager",
        )
        model = model.eval()
        record["loader"] = "transformers.AutoModelForCausalLM.from_pretrained(gguf_file=...)"
        mismatch = compare_weights(model, state, record)
        if mismatch:
            record["errors"].append(f"transformers GGUF weights differ from ours: {mismatch}")
            log(f"WARNING transformers GGUF weights differ from ours: {mismatch}; using ours")
            model = None
    except Exception:
        tb = traceback.format_exc()
        record["errors"].append("transformers GGUF load failed:\n" + tb)
        log("transformers GGUF load failed, falling back to a manual state dict:\n" + tb)
        model = None
    if model is None:
        config = manual_config(transformers, dims)
        model = transformers.LlamaForCausalLM(config).float().eval()
        tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        log(f"manual load: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        record["loader"] = "transformers.LlamaForCausalLM(manual LlamaConfig) + GGUF dequantized"
        record["weights_max_abs_diff_vs_gguf"] = None
        if compare_weights(model, state, record):
            raise RuntimeError("manual model does not hold the GGUF weights")
    log(f"config: {model.config.to_json_string()}")
    return model


def manual_config(transformers, dims):
    kw = {k: v for k, v in dims.items() if k != "rope_theta"}
    kw.update(tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu")
    kw["attn_implementation"] = "eager"
    try:
        config = transformers.LlamaConfig(
            rope_parameters={"rope_type": "default", "rope_theta": dims["rope_theta"]}, **kw
        )
    except TypeError:
        config = transformers.LlamaConfig(rope_theta=dims["rope_theta"], **kw)
    return config


def compare_weights(model, state, record):
    """Empty string when every parameter equals our dequantized GGUF tensor, else a summary."""
    params = dict(model.named_parameters(remove_duplicate=False))
    worst, bad = 0.0, []
    for name, ours in state.items():
        if name not in params:
            bad.append(f"{name} missing")
            continue
        theirs = params[name].detach().float().numpy()
        if theirs.shape != ours.shape:
            bad.append(f"{name} shape {theirs.shape} vs {ours.shape}")
            continue
        diff = float(np.max(np.abs(theirs - ours)))
        worst = max(worst, diff)
        if diff > 1e-6:
            bad.append(f"{name} max|diff|={diff:.3g}")
    record["weights_max_abs_diff_vs_gguf"] = worst
    log(f"weights vs our dequantization: max|diff|={worst:.3g}, problems={bad[:8]}")
    return "; ".join(bad[:8])


# --- The fixture -------------------------------------------------------------------------------


def position_record(logits, subset):
    top = np.argsort(-logits, kind="stable")[:TOP_K]
    return {
        "max_abs_logit": rounded([np.max(np.abs(logits))])[0],
        "top_ids": [int(i) for i in top],
        "top_logits": rounded(logits[top]),
        "subset_logits": rounded(logits[subset]),
    }


def greedy(backend, prefill_last, state):
    """Pure argmax over the raw logits for NEW_TOKENS steps; end-of-sequence does not stop it."""
    out, margins, logits = [], [], prefill_last
    for n in range(NEW_TOKENS):
        top2 = np.argsort(-logits, kind="stable")[:2]
        out.append(int(top2[0]))
        margins.append(float(logits[top2[0]] - logits[top2[1]]))
        if n + 1 < NEW_TOKENS:
            logits = backend.step(state, out[-1])
    return out, margins


def run_prompt(backend, tok, name, text, subset, record, check=None):
    ids = tok.encode(text).ids
    log(f"{name}: {len(ids)} tokens")
    prompt = {"name": name, "text": text, "input_ids": ids}
    record["prompts"].append(prompt)
    logits, state = backend.prefill(ids)
    if check is not None:
        # An independent implementation over the same weights: catches config mix-ups (eps, RoPE).
        other, _ = check.prefill(ids)
        rel = np.max(np.abs(other - logits), axis=-1) / np.max(np.abs(logits), axis=-1)
        prompt["numpy_backend_max_rel_diff"] = float(np.max(rel))
        log(f"{name}: numpy backend max |dlogit|/max|logit| = {np.max(rel):.3g}")
    prompt["positions"] = [position_record(row, subset) for row in logits]
    prompt["last_logits_full"] = rounded(logits[-1])
    prompt["greedy_ids"], margins = greedy(backend, logits[-1], state)
    prompt["greedy_margins"] = rounded(margins)
    prompt["min_greedy_margin"] = float(min(prompt["greedy_margins"]))
    prompt["greedy_text"] = tok.decode(prompt["greedy_ids"], skip_special_tokens=False)
    log(f"{name}: greedy (min margin {prompt['min_greedy_margin']:.4g}): "
        f"{prompt['greedy_text']!r}")
    if hasattr(backend, "full_logits"):
        # The cached greedy path must agree with one uncached pass over prompt + continuation.
        full = backend.full_logits(ids + prompt["greedy_ids"][:-1])[len(ids) - 1 :]
        again = [int(i) for i in np.argmax(full, -1)]
        prompt["greedy_uncached_agrees"] = again == prompt["greedy_ids"]
        log(f"{name}: uncached re-run agrees with cached greedy: {again == prompt['greedy_ids']}")
    return prompt


def write_json(record, path):
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(record, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, path)
    log(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")


def hf_tokenizer_ids(gguf_path, texts, record):
    """transformers' GGUF tokenizer, for the record only (DESIGN.md §3: no digit split)."""
    try:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(
            os.path.dirname(os.path.abspath(gguf_path)), gguf_file=os.path.basename(gguf_path)
        )
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    except Exception:
        record["errors"].append("transformers GGUF tokenizer failed:\n" + traceback.format_exc())
        log("transformers GGUF tokenizer failed:\n" + traceback.format_exc())
        return None


def generate(args):
    record = {
        "format_version": FORMAT_VERSION,
        "model": {"file": os.path.basename(args.gguf), "sha256": sha256_of(args.gguf)},
        "generator": {
            "script": "scripts/hf_oracle.py",
            # Repo-relative on purpose: the real run read a copy of the model elsewhere.
            "command": f"python3 scripts/hf_oracle.py --gguf models/{os.path.basename(args.gguf)}"
            f" --out tests/fixtures/oracle/{os.path.basename(args.out)} --backend {args.backend}",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": args.backend,
            "device": "cpu",
            "dtype": "float32",
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        },
        "errors": [],
        "top_k": TOP_K,
        "new_tokens": NEW_TOKENS,
        "vocab_subset_seed": SUBSET_SEED,
        "prompts": [],
    }
    log(f"model sha256 {record['model']['sha256']}")
    try:
        return fill_record(args, record)
    except Exception:
        record["errors"].append(traceback.format_exc())
        log("failed:\n" + traceback.format_exc())
        write_json(record, args.out)
        return 1


def fill_record(args, record):
    reader, meta = read_gguf(args.gguf)
    dims = model_dims(meta)
    record["dims"] = dims
    log(f"dims {dims}")
    tok = reference_tokenizer(meta)
    from importlib import metadata

    record["generator"].update(
        gguf=metadata.version("gguf"), tokenizers=metadata.version("tokenizers")
    )
    rng = np.random.default_rng(SUBSET_SEED)
    subset = np.sort(rng.choice(dims["vocab_size"], SUBSET_SIZE, replace=False))
    record["vocab_subset"] = [int(i) for i in subset]
    t0 = time.time()
    state = dequantized_state(reader, dims)
    log(f"dequantized {len(state)} tensors in {time.time() - t0:.1f}s")

    if args.backend == "numpy":
        backend, check = NumpyLlama(state, dims), None
    else:
        import torch
        import transformers

        record["generator"].update(torch=torch.__version__, transformers=transformers.__version__,
                                   attn_implementation="eager",
                                   torch_threads=torch.get_num_threads())
        model = load_torch_model(args.gguf, state, dims, record)
        record["generator"]["loader"] = record.pop("loader")
        record["generator"]["torch_threads"] = torch.get_num_threads()
        backend = TorchLlama(model)
        check = NumpyLlama(state, dims)
        hf_ids = hf_tokenizer_ids(args.gguf, [text for _, text in PROMPTS], record)

    status = 0
    for i, (name, text) in enumerate(PROMPTS):
        t0 = time.time()
        try:
            prompt = run_prompt(backend, tok, name, text, subset, record, check)
            if args.backend == "torch" and hf_ids is not None:
                prompt["hf_gguf_tokenizer_ids_match"] = hf_ids[i] == prompt["input_ids"]
                if hf_ids[i] != prompt["input_ids"]:
                    prompt["hf_gguf_tokenizer_ids"] = hf_ids[i]
        except Exception:
            status = 1
            record["errors"].append(f"prompt {name}:\n" + traceback.format_exc())
            log(f"prompt {name} failed:\n" + traceback.format_exc())
        log(f"{name}: {time.time() - t0:.1f}s")
        write_json(record, args.out)
    total = sum(len(p["input_ids"]) for p in record["prompts"])
    log(f"{total} positions over {len(record['prompts'])} prompts; errors: {len(record['errors'])}")
    return status


# --- The CI metric, for checking two fixtures (or a fixture and another engine's dump) ---------


def compare(path_a, path_b):
    a, b = (json.load(open(p)) for p in (path_a, path_b))
    if a["vocab_subset"] != b["vocab_subset"]:
        print("vocab_subset differs")
        return 1
    worst_rel, n_pos, greedy_same, ok = 0.0, 0, 0, True
    for pa, pb in zip(a["prompts"], b["prompts"]):
        if pa["input_ids"] != pb["input_ids"]:
            print(f"{pa['name']}: input_ids differ")
            ok = False
            continue
        for qa, qb in zip(pa["positions"], pb["positions"]):
            scale = max(qa["max_abs_logit"], 1e-6)
            rel = np.max(np.abs(np.subtract(qa["subset_logits"], qb["subset_logits"]))) / scale
            worst_rel = max(worst_rel, float(rel))
            n_pos += 1
        full = np.max(np.abs(np.subtract(pa["last_logits_full"], pb["last_logits_full"])))
        full /= max(pa["positions"][-1]["max_abs_logit"], 1e-6)
        worst_rel = max(worst_rel, float(full))
        first_diff = next(
            (i for i, (x, y) in enumerate(zip(pa["greedy_ids"], pb["greedy_ids"])) if x != y), None
        )
        greedy_same += first_diff is None
        print(f"{pa['name']}: last-position full-vocab rel {full:.3g}; greedy "
              + ("identical" if first_diff is None else
                 f"differs at step {first_diff} (margin {pa['greedy_margins'][first_diff]:.3g})"))
    print(f"max |dlogit| / max |logit| = {worst_rel:.3g} over {n_pos} positions; "
          f"greedy identical for {greedy_same}/{len(a['prompts'])} prompts")
    return 0 if ok and worst_rel <= 1e-3 and greedy_same == len(a["prompts"]) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="the GGUF model file")
    parser.add_argument("--out", help="the fixture JSON to write")
    parser.add_argument("--backend", choices=["torch", "numpy"], default="torch")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="compare two fixtures")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.gguf or not args.out:
        parser.error("--gguf and --out are required")
    return generate(args)


if __name__ == "__main__":
    sys.exit(main())
