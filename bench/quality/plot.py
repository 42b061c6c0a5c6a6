"""Plots a longread_quality_bench JSON: passkey accuracy vs length per method (with counts), and
perplexity / planted-fact bars when the run measured them.

Usage: .venv/bin/python bench/quality/plot.py bench/results/quality-DATE.json [more.json ...]
       [--out bench/results/quality-DATE.png]
Several JSON files are merged (their passkey trials pooled per method and length).
"""

import argparse
import collections
import json
import math
import os

import matplotlib

from table import wilson  # bench/quality/table.py: one interval for the table and the plot

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"dense": "black", "window": "tab:orange", "sparsek": "tab:blue",
          "sparsek-noscorer": "tab:cyan", "blocks": "tab:purple", "blocks+task": "tab:green",
          "blocks+task+recall": "tab:red", "window+recall": "tab:brown",
          "blocks+recall": "tab:pink", "blocks-noscorer": "plum",
          "blocks+task-noscorer": "yellowgreen", "blocks+task+recall-noscorer": "salmon",
          "dense+first": "dimgray", "blocks+task+recall+first": "darkred",
          "window+oracle": "gold"}


def print_table(runs, counts):
    """Markdown table of the pooled runs: accuracy, share of dense, and of the documents dense
    answered (same seed = same document in every run), how many each method answered."""
    docs = collections.defaultdict(dict)  # (length, depth, trial) -> method -> correct
    for run in runs:
        for t in run.get("passkey_trials", []):
            if t["possible"]:
                docs[(t["length"], round(t["depth"], 6), t["trial"])][t["method"]] = t["correct"]
    print("| length | method | correct/trials | accuracy | share of dense | of dense-correct docs |")
    print("|---|---|---|---|---|---|")
    for length in sorted({length for _, length in counts}):
        dense = counts.get(("dense", length))
        for m in sorted({m for m, n in counts if n == length},
                        key=lambda m: list(COLORS).index(m) if m in COLORS else 9):
            c, n = counts[(m, length)]
            share = f"{(c / n) / (dense[0] / dense[1]):.0%}" if dense and dense[0] else "-"
            both = [d[m] for k, d in docs.items() if k[0] == length and d.get("dense") and m in d]
            paired = f"{sum(both)}/{len(both)}" if m != "dense" else "-"
            print(f"| {length} | {m} | {c}/{n} | {c / n:.0%} | {share} | {paired} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out")
    args = ap.parse_args()
    runs = [json.load(open(p)) for p in args.json]
    counts = collections.defaultdict(lambda: [0, 0])  # (method, length) -> [correct, trials]
    ppl, facts = [], []
    scorer = next((r["scorer"] for r in runs if r.get("scorer", "none") != "none"), "none")
    for run in runs:
        for t in run.get("passkey_trials", []):
            if t["possible"]:
                c = counts[(t["method"], t["length"])]
                c[0] += t["correct"]
                c[1] += 1
        ppl += [r for r in run.get("perplexity", []) if r["possible"]]
        facts += [r for r in run.get("facts", []) if r["possible"]]

    print_table(runs, counts)
    panels = 1 + bool(ppl) + bool(facts)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 + 4 * (panels - 1), 4.5), squeeze=False)
    ax = axes[0][0]
    methods = sorted({m for m, _ in counts}, key=lambda m: list(COLORS).index(m) if m in COLORS else 9)
    for i, m in enumerate(methods):
        lengths = sorted(length for mm, length in counts if mm == m)
        dodge = [length * 2 ** (0.04 * (i - (len(methods) - 1) / 2)) for length in lengths]
        acc = [counts[(m, length)][0] / counts[(m, length)][1] for length in lengths]
        lo_hi = [wilson(*counts[(m, length)]) for length in lengths]
        # max(0, ...): at 0/n or n/n the interval's edge equals the accuracy up to rounding.
        err = [[max(0.0, a - lo) for a, (lo, _) in zip(acc, lo_hi)],
               [max(0.0, hi - a) for a, (_, hi) in zip(acc, lo_hi)]]
        label = m if m != "sparsek" else f"sparsek (scorer {os.path.basename(scorer)})"
        ax.errorbar(dodge, acc, yerr=err, marker="o", capsize=3, label=label, color=COLORS.get(m))
        for length, x, a in zip(lengths, dodge, acc):
            c = counts[(m, length)]
            ax.annotate(f"{c[0]}/{c[1]}", (x, a), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=COLORS.get(m))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({n for _, n in counts}), [str(n) for n in sorted({n for _, n in counts})])
    ax.set_xlabel("tokens the model sees (prompt + document + answer room)")
    ax.set_ylabel("passkey accuracy (95% Wilson interval)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"passkey retrieval, {runs[0]['config'].get('haystack', '?')} haystack, "
                 f"budget {runs[0]['config'].get('budget', '?')}")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(alpha=0.3)

    panel = 1
    if ppl:
        ax = axes[0][panel]
        panel += 1
        names = [f"{r['method']}\n{r['tokens']} tok" for r in ppl]
        ax.bar(names, [r["perplexity"] for r in ppl], color=[COLORS.get(r["method"], "gray") for r in ppl])
        for i, r in enumerate(ppl):
            ax.annotate(f"{r['perplexity']:.2f}", (i, r["perplexity"]), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("perplexity after the first segment")
        ax.set_title("long real text")
    if facts:
        ax = axes[0][panel]
        ax.bar([r["method"] for r in facts], [r["mentioned"] for r in facts],
               color=[COLORS.get(r["method"], "gray") for r in facts])
        for i, r in enumerate(facts):
            ax.annotate(f"{r['mentioned']}/{r['facts']}", (i, r["mentioned"]), ha="center", va="bottom")
        ax.set_ylim(0, max(r["facts"] for r in facts))
        ax.set_ylabel(f"planted facts in the summary (of {facts[0]['facts']})")
        ax.set_title(f"summary of a {facts[0]['total_tokens']}-token document")
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(args.json[0]),
                                   f"quality-{runs[0]['date'][:10]}.png")
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
