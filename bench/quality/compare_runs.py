"""Paired comparison of two sets of longread_quality_bench passkey runs on the same documents:
the CPU and GPU backends (issue 19: "agree within the interval on 8K"), or two generation
settings. Trials pair by (method, length, trial index); a pair whose document hashes differ is
dropped and counted (a record recovered from a log has no hash and pairs by index alone). The
blocks* methods of a run without a scorer are named -noscorer, as merge_runs.py names them.

Usage: python3 bench/quality/compare_runs.py --a A.json ... --b B.json ... [--length 8192]
           [--a-answer first|compared] [--b-answer first|compared] [--a-name CPU --b-name GPU]

--X-answer compared: use the second answer of runs made with --compare-* (compared_correct,
compared_answer) instead of the first. Per method: both sides' accuracy with 95% Wilson
intervals, whether each point lies in the other's interval, the discordant pairs with an exact
two-sided sign test (McNemar), and how many answers are the same text.
"""

import argparse
import json
import math

from merge_runs import rename
from table import ORDER, wilson


def load(paths, which):
    out = {}
    for path in paths:
        run = json.load(open(path))
        for t in run.get("passkey_trials", []):
            if not t.get("possible", True):
                continue
            # A run without a scorer names its blocks* methods -noscorer, as merge_runs.py does.
            t = dict(t, method=rename(t["method"], run.get("scorer") == "none"))
            if which == "compared":
                if "compared_correct" not in t:
                    continue
                t = dict(t, correct=t["compared_correct"], answer=t.get("compared_answer"))
            out.setdefault((t["method"], t["length"], t["trial"]), t)
    return out


def sign_test(b, c):
    """Exact two-sided p of b vs c discordant pairs under 'no difference' (McNemar)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", nargs="+", required=True)
    ap.add_argument("--b", nargs="+", required=True)
    ap.add_argument("--a-answer", choices=["first", "compared"], default="first")
    ap.add_argument("--b-answer", choices=["first", "compared"], default="first")
    ap.add_argument("--a-name", default="A")
    ap.add_argument("--b-name", default="B")
    ap.add_argument("--length", type=int, default=0, help="only this length (0: all)")
    args = ap.parse_args()
    a, b = load(args.a, args.a_answer), load(args.b, args.b_answer)
    pairs, mismatched = {}, 0
    for key, ta in a.items():
        tb = b.get(key)
        if tb is None or (args.length and key[1] != args.length):
            continue
        ha, hb = ta.get("document_hash"), tb.get("document_hash")
        if ha and hb and ha != hb:
            mismatched += 1
            continue
        pairs.setdefault((key[1], key[0]), []).append((ta, tb))
    A, B = args.a_name, args.b_name
    print(f"| length | method | paired trials | {A} correct (95% CI) | {B} correct (95% CI) | "
          f"each in the other's CI | only {A} / only {B} (sign test p) | same answer |")
    print("|---|---|---|---|---|---|---|---|")
    rank = lambda m: ORDER.index(m) if m in ORDER else len(ORDER)
    for length, method in sorted(pairs, key=lambda k: (k[0], rank(k[1]))):
        ps = pairs[(length, method)]
        n = len(ps)
        ca = sum(x["correct"] for x, _ in ps)
        cb = sum(y["correct"] for _, y in ps)
        la, ha = wilson(ca, n)
        lb, hb = wilson(cb, n)
        inside = la <= cb / n <= ha and lb <= ca / n <= hb
        only_a = sum(x["correct"] and not y["correct"] for x, y in ps)
        only_b = sum(y["correct"] and not x["correct"] for x, y in ps)
        texts = [(x.get("answer"), y.get("answer")) for x, y in ps
                 if x.get("answer") is not None and y.get("answer") is not None]
        same = sum(x == y for x, y in texts)
        trials = sorted(x["trial"] for x, _ in ps)
        print(f"| {length // 1024}K | {method} | {n} ({trials[0]}–{trials[-1]}) | "
              f"{ca}/{n} = {ca / n:.0%} ({la:.0%}–{ha:.0%}) | {cb}/{n} = {cb / n:.0%} "
              f"({lb:.0%}–{hb:.0%}) | {'yes' if inside else 'NO'} | {only_a} / {only_b} "
              f"(p = {sign_test(only_a, only_b):.2f}) | {same}/{len(texts)} |")
    if mismatched:
        print(f"\n{mismatched} pairs dropped: the documents differ (document_hash).")


if __name__ == "__main__":
    main()
