"""Merges longread_quality_bench JSON files of one evaluation split over processes or machines
into one JSON (trials pooled, the first file's header kept, every source listed), and recovers
the finished trials of processes that were killed before writing their JSON from their logs.

Usage: python3 bench/quality/merge_runs.py --out OUT.json [--logs LOG ...] [--noscorer-suffix]
           [--note TEXT] RUN.json ...

--noscorer-suffix: the runs had no scorer; the methods that use one (blocks*, sparsek) are
renamed METHOD-noscorer so that they are never pooled with runs that used the calibrated scorer.
Recovered log trials carry only what the log line says (method, length, depth, trial, key,
correct, key_held_share, compared_correct): no answer text, no document hash.
"""

import argparse
import json
import re

# "held -100%": the share was not measured (recorded as -1, as the bench does).
LOG_LINE = re.compile(r"len (\d+) depth (\S+) trial (\d+) (\S+)\s+key (\d+) (OK|MISS)\s+held\s+(-?\d+)%")
COMPARED = re.compile(r"\(compared: (same answer|other, OK|other, MISS)\)")
USES_SCORER = ("blocks", "sparsek")


def rename(method, noscorer):
    if noscorer and method.startswith(USES_SCORER) and "noscorer" not in method:
        return method + "-noscorer"
    return method


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--logs", nargs="*", default=[])
    ap.add_argument("--noscorer-suffix", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    runs = [json.load(open(p)) for p in args.runs]
    merged = dict(runs[0]) if runs else {"bench": "quality", "config": {}}
    merged["sources"] = [
        {"file": p, "command": r.get("command"), "date": r.get("date"), "device": r.get("device"),
         "stopped_early": r.get("stopped_early"), "elapsed_seconds": r.get("elapsed_seconds")}
        for p, r in zip(args.runs, runs)]
    # A trial index run twice (overlapping ranges of two calls) counts once: the first record.
    trials, seen, duplicates = [], set(), 0
    for r in runs:
        for t in r.get("passkey_trials", []):
            t = dict(t, method=rename(t["method"], args.noscorer_suffix))
            key = (t["method"], t["length"], t["trial"])
            if key in seen:
                duplicates += 1
                continue
            trials.append(t)
            seen.add(key)
    recovered = 0
    for path in args.logs:
        for line in open(path):
            m = LOG_LINE.search(line)
            if not m:
                continue
            method = rename(m.group(4), args.noscorer_suffix)
            key = (method, int(m.group(1)), int(m.group(3)))
            if key in seen:
                continue
            seen.add(key)
            recovered += 1
            trials.append({"method": method, "length": key[1], "depth": float(m.group(2)),
                           "trial": key[2], "key": m.group(5), "possible": True,
                           "correct": m.group(6) == "OK",
                           "key_held_share": max(-1.0, int(m.group(7)) / 100.0),
                           "recovered_from_log": path})
            compared = COMPARED.search(line)
            if compared:  # --compare-*: the second answer's outcome, as the line says it
                trials[-1]["compared"] = True
                trials[-1]["compared_correct"] = (trials[-1]["correct"]
                                                  if compared.group(1) == "same answer"
                                                  else compared.group(1) == "other, OK")
    merged["passkey_trials"] = trials
    merged.pop("passkey_summary", None)
    merged.pop("passkey_by_depth", None)
    merged["merge_note"] = (f"{len(runs)} runs merged, {recovered} trials recovered from logs, "
                            f"{duplicates} duplicate trial records dropped"
                            + (", blocks*/sparsek renamed -noscorer (no scorer in these runs)"
                               if args.noscorer_suffix else "") + (f"; {args.note}" if args.note else ""))
    json.dump(merged, open(args.out, "w"), indent=1)
    print(args.out, len(trials), "trials;", merged["merge_note"])


if __name__ == "__main__":
    main()
