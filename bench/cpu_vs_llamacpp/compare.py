#!/usr/bin/env python3
"""Merges longread_cpu_bench's JSON and llamacpp_bench.py's JSON into one table with the ratio
ours / llama.cpp for every row, prints it and writes bench/results/cpu-vs-llamacpp-<date>.json.

  compare.py --ours OURS.json --llamacpp LLAMACPP.json --out OUT.json [--command TEXT]
             [--notes TEXT]

A size llama.cpp cannot read (beyond the model's trained context) is "not possible", never 0.
"""
import argparse
import json


def median_of(entry, key):
    return entry[key]["median_tok_s"] if entry and key in entry else None


def row(name, ours, theirs, ours_note="", theirs_note=""):
    ratio = ours / theirs if ours is not None and theirs is not None else None
    return {"measurement": name, "ours_tok_s": ours, "llamacpp_tok_s": theirs,
            "ratio_ours_over_llamacpp": ratio, "ours_note": ours_note,
            "llamacpp_note": theirs_note}


def build_rows(ours, theirs):
    decode_n = ours["decode_tokens"]
    o_dense = {d["tokens"]: d for d in ours["dense"]}
    t_dense = {d["tokens"]: d for d in theirs["dense"]}
    t_impossible = {d["tokens"]: d["reason"] for d in theirs["not_possible"]}
    rows = []
    for n in sorted(set(o_dense) | set(t_dense)):
        rows.append(row(f"prefill {n} (dense)", median_of(o_dense.get(n), "prefill"),
                        median_of(t_dense.get(n), "prefill")))
    for n in sorted(set(o_dense) | set(t_dense)):
        o, t = median_of(o_dense.get(n), "decode"), median_of(t_dense.get(n), "decode")
        if o is not None or t is not None:
            rows.append(row(f"decode {decode_n} after {n} (dense)", o, t))
    for s in ours["sparsek"]:
        n = s["tokens"]
        o = s["read"]["median_tok_s"] if s["status"] == "measured" else None
        o_note = "" if o is not None else f"{s['status']}: {s['reason']}"
        if s["status"] == "measured":
            o_note = (f"VmRSS {s['rss_start_kb']} -> {s['rss_end_kb']} kB, "
                      f"peak {s['rss_peak_kb']} kB")
        t = median_of(t_dense.get(n), "prefill")
        if t is not None:
            t_note = "dense prefill of the same tokens"
        elif n > theirs["n_ctx_train"]:
            t_note = "not possible: " + t_impossible.get(
                n, f"beyond the model's trained context of {theirs['n_ctx_train']} tokens")
        else:
            t_note = "not measured"
        rows.append(row(f"read {n} (ours: SparseK defaults)", o, t, o_note, t_note))
    return rows


def fmt(value, note):
    if value is not None:
        return f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return note.split(":")[0] if note else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--llamacpp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="")
    ap.add_argument("--notes", default="")
    args = ap.parse_args()
    ours = json.load(open(args.ours))
    theirs = json.load(open(args.llamacpp))
    rows = build_rows(ours, theirs)

    print(f"\ncpu: {ours['device']['cpu']} | cores {ours['device']['cores']} | threads "
          f"ours {ours['device']['threads']}, llama.cpp {theirs['device']['threads']}")
    print(f"ours: {ours['git_commit']} | llama.cpp: {theirs['engine']} "
          f"(n_batch = n_ubatch = {theirs['settings']['n_batch']})")
    print(f"{'tokens/s (median of reps)':<40} {'ours':>12} {'llama.cpp':>14} {'ours/l.cpp':>11}")
    for r in rows:
        ratio = f"{r['ratio_ours_over_llamacpp']:.2f}x" if r["ratio_ours_over_llamacpp"] else "-"
        print(f"{r['measurement']:<40} {fmt(r['ours_tok_s'], r['ours_note']):>12} "
              f"{fmt(r['llamacpp_tok_s'], r['llamacpp_note']):>14} {ratio:>11}")

    doc = {
        "bench": "cpu-vs-llamacpp",
        "device": ours["device"],
        "date": ours["date"],
        "command": args.command,
        "versions": {"ours": "longread " + ours["git_commit"], "llamacpp": theirs["engine"],
                     "llamacpp_system_info": theirs["llama_cpp_system_info"]},
        "model": ours["model"],
        "tokens_source": theirs["tokens_source"] + " (the same ids for both)",
        "llamacpp_settings": theirs["settings"],
        "ours_method": ours["method"],
        "load_average": {"ours": [ours["load_average_at_start"], ours["load_average_at_end"]],
                         "llamacpp": [theirs["load_average_at_start"],
                                      theirs["load_average_at_end"]]},
        "notes": args.notes,
        "rows": rows,
        "ours_raw": ours,
        "llamacpp_raw": theirs,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
