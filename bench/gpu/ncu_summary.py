"""Per-segment kernel time from an ncu CSV (--metrics gpu__time_duration.sum --csv) of
memory_read_bench: the kernels from the first embedding gather on (the read; before it, the
model's upload), grouped by name, divided by the number of segments (embedding gathers)."""
import collections
import csv
import re
import sys


def main(path):
    rows = list(csv.DictReader(line for line in open(path) if line.startswith('"')))
    names = [r["Kernel Name"] for r in rows]
    segments = [i for i, n in enumerate(names) if "Embedding" in n]
    if not segments:
        sys.exit("no embedding gather in the profile")
    read = rows[segments[0]:]
    total = collections.defaultdict(float)
    count = collections.Counter()
    for r in read:
        name = re.sub(r"\(.*", "", r["Kernel Name"])
        value = float(r["Metric Value"].replace(",", ""))
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3,
                 "msecond": 1e3}[r["Metric Unit"]]
        total[name] += value * scale
        count[name] += 1
    n = len(segments)
    all_us = sum(total.values())
    print(f"{len(read) // n} kernels per segment, kernel time {all_us / n:.0f} us per segment")
    for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"{us / n:9.1f} us/seg {count[name] / n:6.1f} launches/seg "
              f"{100 * us / all_us:5.1f}%  {name[:80]}")


if __name__ == "__main__":
    main(sys.argv[1])
