#!/usr/bin/env python3
"""Measures a worker's SIGTERM drain on the one-machine cluster (cluster.py), with the real
processes: a job at the default memory settings (or --tiny), SIGTERM to a worker --delay seconds
after it finished its first segment (so mid-segment), then
  - its plaintext health port, polled during the drain (Kubernetes' readiness probe): NOT_SERVING;
  - the drain the worker logs (`drained` seconds) and SIGTERM-to-exit as seen from outside, which
    is what terminationGracePeriodSeconds must cover;
  - that the job still finishes on the other worker (a `drained` failover).
Used to size deploy/k8s's terminationGracePeriodSeconds (deploy/README.md, Graceful shutdown).

  deploy/local/measure_drain.py [--drain-seconds 60] [--threads 2] [--tokens 6000] [--delay 3]
"""
import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster as local  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.environ.get("LONGREAD_BUILD_DIR", "build"))
    parser.add_argument("--model", default=os.environ.get(
        "LONGREAD_MODEL", str(local.REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    parser.add_argument("--drain-seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=2, help="per worker (the cpu overlay's)")
    parser.add_argument("--tokens", type=int, default=6000, help="about, per document")
    parser.add_argument("--delay", type=float, default=3, help="after the first segment")
    parser.add_argument("--tiny", action="store_true", help="the tests' memory settings")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    c = local.Cluster(args.build, args.model, prometheus=False, checkpoint_seconds=30,
                      drain_seconds=args.drain_seconds, threads=args.threads, capacity=2)
    c.keep = args.keep
    with c:
        docs = local.documents(c.dir / "documents", 2, chars=args.tokens * 4)
        settings = local.TINY_JOB if args.tiny else ["--max-tokens", "24"]
        job_id = c.client("submit", "--question", "What is described here?", *settings,
                          *map(str, docs)).stdout.strip()

        def first_segment_done():
            for name in ("worker-0", "worker-1"):
                s = c.scrape(name)
                if (local.metric(s, "longread_segment_seconds_count") >= 1
                        and local.metric(s, "longread_worker_documents_in_flight") > 0):
                    return name
            return None

        t0 = time.time()
        while not (victim := first_segment_done()):
            if time.time() - t0 > 900:
                raise TimeoutError("no worker finished a segment in 900 s")
            time.sleep(0.2)
        segment = local.metric(c.scrape(victim), "longread_segment_seconds_sum")
        time.sleep(args.delay)
        in_flight = local.metric(c.scrape(victim), "longread_worker_documents_in_flight")
        load = os.getloadavg()[0]
        process = c.processes[victim]
        t_term = time.time()
        process.signal(signal.SIGTERM)
        health = set()
        while process.alive():
            try:
                health.add(c.health(victim, "longread.v1.WorkerService"))
            except Exception as e:  # the port closes as the process exits
                health.add(type(e).__name__)
            time.sleep(0.2)
        t_exit = time.time()
        code = process.popen.returncode
        drained = [json.loads(line) for line in process.log_text().splitlines()
                   if '"event":"drained"' in line]
        watched = c.client("watch", "--quiet", job_id, role="read", check=False, timeout=1800)
        job = json.loads(c.client("get", "--json", job_id, role="read").stdout)
        result = {
            "settings": "tiny" if args.tiny else "default",
            "threads": args.threads,
            "first_segment_seconds": round(segment, 3),
            "documents_in_flight": in_flight,
            "drain_seconds_flag": args.drain_seconds,
            "drained_logged": drained[0] if drained else None,
            "sigterm_to_exit_seconds": round(t_exit - t_term, 3),
            "exit_code": code,
            "health_during_drain": sorted(health),
            "load_average_1m": round(load, 2),
            "job": job["state"],
            "watch_exit": watched.returncode,
        }
        print(json.dumps(result))
        ok = (code == 0 and "NOT_SERVING" in health and "SERVING" not in health
              and job["state"] == "JOB_STATE_SUCCEEDED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
