"""Merges attention_bench's and sdpa_bench.py's JSON into the comparison table and the results
file: the time to read a whole document of N tokens, our kernel (N / L segments, each attending
over the fixed memory + the segment) against SDPA's one dense causal pass over N.

Usage: python3 bench/gpu/report.py OURS.json SDPA.json --command CMD --out RESULTS.json
"""
import argparse
import datetime
import json


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ours")
    p.add_argument("sdpa")
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ours = json.load(open(a.ours))
    sdpa = json.load(open(a.sdpa))
    seg = ours["segment"]
    per_seg = ours["attention_ms_per_segment"]
    per_seg_rope = per_seg + ours["rope_ms_per_segment"]
    rows = []
    for r in sdpa["rows"]:
        n = r["tokens"]
        segments = n / seg
        mine = segments * per_seg
        mine_rope = segments * per_seg_rope
        s = r["sdpa_ms"]
        rows.append({
            "tokens": n,
            "segments": segments,
            "ours_ms": mine,
            "ours_with_rope_ms": mine_rope,
            "sdpa_ms": s,
            "speedup": s / mine if s else None,
            "speedup_with_rope": s / mine_rope if s else None,
        })
    print(f"device: {ours['device']} (torch {sdpa['torch']})")
    print(f"ours: {per_seg:.3f} ms attention + {ours['rope_ms_per_segment']:.3f} ms RoPE per "
          f"segment of {seg} ({ours['n_keys']} keys, {ours['mean_visible_keys_per_query']:.0f} "
          f"visible per query, {ours['useful_tflops']:.0f} useful TFLOP/s)")
    print(f"{'tokens':>9} {'segments':>8} {'ours ms':>9} {'+rope ms':>9} {'SDPA ms':>9} "
          f"{'ratio':>7} {'ratio+rope':>10}")
    for r in rows:
        sd = f"{r['sdpa_ms']:9.2f}" if r["sdpa_ms"] else f"{'n/a':>9}"
        ratio = f"{r['speedup']:7.1f}" if r["speedup"] else f"{'n/a':>7}"
        ratio2 = f"{r['speedup_with_rope']:10.1f}" if r["speedup_with_rope"] else f"{'n/a':>10}"
        print(f"{r['tokens']:>9} {r['segments']:>8.0f} {r['ours_ms']:9.2f} "
              f"{r['ours_with_rope_ms']:9.2f} {sd} {ratio} {ratio2}")
    result = {
        "benchmark": "gpu-attention",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": ours["device"],
        "command": a.command,
        "method": "ours: CUDA-event median of one segment's attention (and RoPE of its queries "
        "and of all keys) over the SparseK memory, times N / L segments (every segment costs "
        "the same once the memory is full; the first, with an empty memory, costs less). SDPA: "
        "CUDA-event median of one dense causal pass over N tokens.",
        "ours": ours,
        "sdpa": sdpa,
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
