"""Markdown table of pooled longread_quality_bench passkey trials: per length and method, the
count, accuracy with its 95% Wilson interval, share of dense's accuracy at that length, and the
mean share of (layer, KV head) holding the key at answer time.

Usage: python3 bench/quality/table.py RUN.json ...
A (method, length, trial) that appears in several files is counted once (the first file's).
"""

import collections
import json
import math
import sys

ORDER = ["dense", "dense+first", "window", "window+recall", "sparsek", "sparsek-noscorer",
         "blocks", "blocks-noscorer", "blocks+task", "blocks+task-noscorer", "blocks+task+recall",
         "blocks+task+recall-noscorer", "blocks(mean)+task+recall-noscorer",
         "blocks+task+recall+first-noscorer"]


def wilson(c, n, z=1.96):
    """95% Wilson interval: honest error bars for small trial counts (also used by plot.py)."""
    if n == 0:
        return 0.0, 0.0
    p = c / n
    d = 1 + z * z / n
    m = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, m - h), min(1.0, m + h)


def main():
    stats = collections.defaultdict(lambda: [0, 0, 0.0, 0])
    seen = set()
    for path in sys.argv[1:]:
        for t in json.load(open(path)).get("passkey_trials", []):
            key = (t["method"], t["length"], t["trial"])
            if not t["possible"] or key in seen:
                continue
            seen.add(key)
            s = stats[(t["length"], t["method"])]
            s[0] += t["correct"]
            s[1] += 1
            if t.get("key_held_share", -1) >= 0:
                s[2] += t["key_held_share"]
                s[3] += 1
    print("| length | method | correct/trials | accuracy (95% CI) | share of dense | key held |")
    print("|---|---|---|---|---|---|")
    for length in sorted({k[0] for k in stats}):
        dense = stats.get((length, "dense"))
        methods = sorted({k[1] for k in stats if k[0] == length},
                         key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
        for m in methods:
            c, n, held, n_held = stats[(length, m)]
            lo, hi = wilson(c, n)
            share = f"{(c / n) / (dense[0] / dense[1]):.0%}" if dense and dense[0] else "–"
            held_share = f"{held / n_held:.0%}" if n_held else "–"  # not measured
            print(f"| {length // 1024}K | {m} | {c}/{n} | {c / n:.0%} ({lo:.0%}–{hi:.0%}) | "
                  f"{share} | {held_share} |")


if __name__ == "__main__":
    main()
