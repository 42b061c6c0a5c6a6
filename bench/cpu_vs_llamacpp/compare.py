#!/usr/bin/env python3
"""Merges longread_cpu_bench's JSON and llamacpp_bench.py's JSONs into one table, prints it and
writes bench/results/cpu-vs-llamacpp-<date>.json.

  compare.py --ours OURS.json --llamacpp DEFAULT.json --llamacpp-passive PASSIVE.json
             --out OUT.json [--command TEXT] [--notes TEXT]

llama.cpp is measured twice in the same run: under its default OpenMP wait policy (workers spin:
fastest on an idle machine) and under OMP_WAIT_POLICY=PASSIVE (faster when the cores are
oversubscribed). Each row compares ours against the faster of the two, and names which it was.
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


def best_of(rows_default, rows_passive):
    """One row per measurement: both policies' speeds, the faster as llamacpp_tok_s."""
    merged = []
    for d, p in zip(rows_default, rows_passive):
        assert d["measurement"] == p["measurement"]
        speeds = {"default": d["llamacpp_tok_s"], "passive": p["llamacpp_tok_s"]}
        measured = {k: v for k, v in speeds.items() if v is not None}
        policy = max(measured, key=measured.get) if measured else None
        r = row(d["measurement"], d["ours_tok_s"], measured.get(policy), d["ours_note"],
                d["llamacpp_note"])
        r["llamacpp_default_tok_s"] = speeds["default"]
        r["llamacpp_passive_tok_s"] = speeds["passive"]
        r["llamacpp_faster_policy"] = policy
        merged.append(r)
    return merged


def fmt(value, note):
    if value is not None:
        return f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return note.split(":")[0] if note else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--llamacpp", required=True, help="llama.cpp, default OpenMP wait policy")
    ap.add_argument("--llamacpp-passive", required=True, help="llama.cpp, OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="")
    ap.add_argument("--notes", default="")
    args = ap.parse_args()
    ours = json.load(open(args.ours))
    theirs = json.load(open(args.llamacpp))
    passive = json.load(open(args.llamacpp_passive))
    rows = best_of(build_rows(ours, theirs), build_rows(ours, passive))

    print(f"\ncpu: {ours['device']['cpu']} | cores {ours['device']['cores']} | threads "
          f"ours {ours['device']['threads']}, llama.cpp {theirs['device']['threads']}")
    print(f"ours: {ours['git_commit']} | llama.cpp: {theirs['engine']} "
          f"(n_batch = n_ubatch = {theirs['settings']['n_batch']})")
    print("llama.cpp under its default OpenMP wait policy and under OMP_WAIT_POLICY=PASSIVE; "
          "ours/l.cpp is against the faster")
    print(f"{'tokens/s (median of reps)':<40} {'ours':>10} {'l.cpp dflt':>11} "
          f"{'l.cpp PASSIVE':>14} {'ours/faster':>12}")
    for r in rows:
        ratio = f"{r['ratio_ours_over_llamacpp']:.2f}x" if r["ratio_ours_over_llamacpp"] else "-"
        print(f"{r['measurement']:<40} {fmt(r['ours_tok_s'], r['ours_note']):>10} "
              f"{fmt(r['llamacpp_default_tok_s'], r['llamacpp_note']):>11} "
              f"{fmt(r['llamacpp_passive_tok_s'], r['llamacpp_note']):>14} {ratio:>12}")

    doc = {
        "bench": "cpu-vs-llamacpp",
        "device": ours["device"],
        "date": ours["date"],
        "command": args.command,
        "versions": {"ours": "longread " + ours["git_commit"], "llamacpp": theirs["engine"],
                     "llamacpp_system_info": theirs["llama_cpp_system_info"]},
        "model": ours["model"],
        "tokens_source": theirs["tokens_source"] + " (the same ids for both)",
        "llamacpp_settings": {"default": theirs["settings"], "passive": passive["settings"]},
        "llamacpp_comparison": "ratio_ours_over_llamacpp is against the faster of llama.cpp's "
                               "default OpenMP wait policy and OMP_WAIT_POLICY=PASSIVE, measured "
                               "in the same run (llamacpp_faster_policy)",
        "ours_method": ours["method"],
        "load_average": {"ours": [ours["load_average_at_start"], ours["load_average_at_end"]],
                         "llamacpp_default": [theirs["load_average_at_start"],
                                              theirs["load_average_at_end"]],
                         "llamacpp_passive": [passive["load_average_at_start"],
                                              passive["load_average_at_end"]]},
        "notes": args.notes,
        "rows": rows,
        "ours_raw": ours,
        "llamacpp_raw": theirs,
        "llamacpp_passive_raw": passive,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
