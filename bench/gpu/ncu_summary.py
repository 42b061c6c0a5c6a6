"""Per-segment kernel time from an ncu CSV (--metrics gpu__time_duration.sum --csv) of
memory_read_bench: the kernels from the first embedding gather on (the read; before it, the
model's upload), grouped by name, divided by the number of segments (embedding gathers).
With a segment number (1-based) as second argument, that segment alone: the first segments of
a read hold fewer keys, so the last one is the steady state.

  ncu_summary.py NCU.csv [SEGMENT]"""
import collections
import csv
import re
import sys


def main(path, only=None):
    rows = list(csv.DictReader(line for line in open(path) if line.startswith('"')))
    names = [r["Kernel Name"] for r in rows]
    segments = [i for i, n in enumerate(names) if "Embedding" in n]
    if not segments:
        sys.exit("no embedding gather in the profile")
    read = rows[segments[0]:]
    n = len(segments)
    if only is not None:
        if not 1 <= only <= n:
            sys.exit(f"segment {only} not in the profile ({n} segments)")
        end = segments[only] if only < n else len(rows)
        read = rows[segments[only - 1]:end]
        n = 1
    total = collections.defaultdict(float)
    count = collections.Counter()
    for r in read:
        name = re.sub(r"\(.*", "", r["Kernel Name"])
        value = float(r["Metric Value"].replace(",", ""))
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3,
                 "msecond": 1e3}[r["Metric Unit"]]
        total[name] += value * scale
        count[name] += 1
    all_us = sum(total.values())
    print(f"{len(read) // n} kernels per segment, kernel time {all_us / n:.0f} us per segment")
    for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"{us / n:9.1f} us/seg {count[name] / n:6.1f} launches/seg "
              f"{100 * us / all_us:5.1f}%  {name[:80]}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
