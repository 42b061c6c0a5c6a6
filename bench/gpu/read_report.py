"""Merges forward_bench's and hf_read_bench.py's JSON: reading tokens/s and GPU memory, ours (one
segment forward over the fixed-size memory; constant in the document's length) against
transformers reading the whole document in one dense forward.

Usage: python3 bench/gpu/read_report.py FORWARD.json HF.json --command CMD --out RESULTS.json
"""
import argparse
import datetime
import json


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ours")
    p.add_argument("hf")
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ours = json.load(open(a.ours))
    hf = json.load(open(a.hf))
    ms = min(x for x in (ours["forward_ms"], ours["forward_graph_ms"]) if x and x > 0)
    ours_tps = ours["segment"] / (ms / 1e3)
    rows = []
    print(f"device: {ours['device']} (transformers {hf['transformers']}, torch {hf['torch']})")
    print(f"ours: {ms:.2f} ms per segment of {ours['segment']} = {ours_tps:,.0f} tokens/s at any "
          f"length, {ours['device_memory_gib']:.2f} GiB (attention {100 * (1 - ours['forward_without_attention_ms'] / ours['forward_ms']):.0f}%)")
    print(f"{'tokens':>8} {'ours tok/s':>12} {'HF tok/s':>12} {'ratio':>6} {'HF peak GiB':>11}")
    for r in hf["rows"]:
        tps = r.get("tokens_per_s")
        rows.append({"tokens": r["tokens"], "ours_tokens_per_s": ours_tps, "hf_tokens_per_s": tps,
                     "ratio": ours_tps / tps if tps else None, "hf_peak_gib": r.get("peak_gib"),
                     "ours_gib": ours["device_memory_gib"]})
        hf_s = f"{tps:12,.0f}" if tps else f"{'OOM':>12}"
        ratio = f"{ours_tps / tps:6.2f}" if tps else f"{'n/a':>6}"
        peak = f"{r['peak_gib']:11.2f}" if tps else f"{'':>11}"
        print(f"{r['tokens']:>8} {ours_tps:12,.0f} {hf_s} {ratio} {peak}")
    json.dump({
        "benchmark": "gpu-read",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": ours["device"],
        "command": a.command,
        "method": "ours: forward_bench, CUDA-event median of one 4096-token segment through 30 "
        "layers of SmolLM2-135M shapes (random Q4_1 weights as bf16) over a full SparseK memory "
        "(s+k+w = 3076 keys), best of stream and CUDA-graph replay; the scorer, selection, "
        "eviction and archive are not on the GPU yet and not timed. HF: transformers "
        "LlamaModel (no LM head) with the same shapes, random bf16 weights, SDPA, one forward "
        "over the whole document, median of 3.",
        "ours": ours, "hf": hf, "rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
