#!/usr/bin/env bash
# The README's main job (scripts/summarize.sh once built: `longread run --task summarize` on the
# GNU GPL v3 with the defaults), run N times from a given build: wall time, read speed, peak RSS
# and the load average around each run. Prints a table; writes bench/results/main-job-<date>.json.
#
#   bench/main_job/run.sh                       # 3 runs of build/services/cli/longread
#   RUNS=5 BUILD_DIR=build-x DOC=FILE TAG=quiet NOTES="..." bench/main_job/run.sh
#
# The README's speed claim is a range of what this measures: quote it with the load average it
# recorded (a shared machine is not an idle one).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
BUILD_DIR=${BUILD_DIR:-build}
DOC=${DOC:-/usr/share/common-licenses/GPL-3}
NOTES=${NOTES:-}
THREADS=${THREADS:-}
date=$(date -u +%Y-%m-%d)${TAG:+-$TAG}
out=bench/results/main-job-$date.json
binary=$BUILD_DIR/services/cli/longread
[ -x "$binary" ] || { echo "no $binary: build it (ninja -C $BUILD_DIR longread)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

args=(run --task summarize --json --cache-dir "$work/cache")
[ -n "$THREADS" ] && args+=(--threads "$THREADS")
for ((i = 1; i <= RUNS; i++)); do
  cut -d' ' -f1-3 /proc/loadavg >"$work/load-before-$i"
  /usr/bin/time -f '%e %M' -o "$work/time-$i" "$binary" "${args[@]}" "$DOC" \
    >"$work/out-$i.json" 2>"$work/err-$i" || { cat "$work/err-$i" >&2; exit 1; }
  cut -d' ' -f1-3 /proc/loadavg >"$work/load-after-$i"
  echo "run $i/$RUNS: $(cat "$work/time-$i") (wall s, peak KB)" >&2
done

shown="$binary ${args[*]} $DOC"
python3 - "$work" "$RUNS" "$out" "${shown//$work/\$TMPDIR}" "$NOTES" "$BUILD_DIR" <<'PY'
import json, os, platform, subprocess, sys, time
work, runs, out, command, notes, build = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
def read(name):
    with open(os.path.join(work, name)) as f:
        return f.read().strip()
cpu = "unknown"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
records = []
for i in range(1, runs + 1):
    wall, rss_kb = read(f"time-{i}").split()[-2:]
    cli = json.loads(read(f"out-{i}.json"))
    records.append({
        "run": i,
        "wall_seconds": float(wall),
        "max_rss_mb": round(int(rss_kb) / 1024, 1),
        "document_tokens": cli["document_tokens"],
        "read_seconds": cli["read_seconds"],
        "read_tokens_per_second": round(cli["document_tokens"] / cli["read_seconds"], 1),
        "recall_seconds": cli["recall_seconds"],
        "generate_seconds": cli["generate_seconds"],
        "generated_tokens": cli["generated_tokens"],
        "load_average_before": read(f"load-before-{i}"),
        "load_average_after": read(f"load-after-{i}"),
        "answer": cli["answer"],
    })
def span(key):
    values = [r[key] for r in records]
    return {"min": min(values), "max": max(values)}
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = ""
report = {
    "bench": "main-job",
    "what": "scripts/summarize.sh's main job once built: longread run --task summarize, defaults",
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "device": {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine()},
    "command": command,
    "build_dir": build,
    "git_commit": commit,
    "runs": records,
    "range": {k: span(k) for k in ("wall_seconds", "read_seconds", "read_tokens_per_second")},
    "notes": notes,
}
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"{'run':>3} {'wall s':>7} {'read s':>7} {'read tok/s':>10} {'recall s':>8} {'answer s':>8} "
      f"{'peak MB':>7}  load before -> after")
for r in records:
    print(f"{r['run']:>3} {r['wall_seconds']:>7.1f} {r['read_seconds']:>7.1f} "
          f"{r['read_tokens_per_second']:>10.1f} {r['recall_seconds']:>8.1f} "
          f"{r['generate_seconds']:>8.1f} {r['max_rss_mb']:>7.0f}  "
          f"{r['load_average_before']} -> {r['load_average_after']}")
print(f"cpu: {cpu}; wrote {out}")
PY
