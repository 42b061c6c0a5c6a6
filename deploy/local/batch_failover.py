#!/usr/bin/env python3
"""Runs a batch of jobs through a one-machine cluster (cluster.py) with the real clients
(`longread submit`, `longread watch`, `longread get`), SIGKILLs a worker while it reads, and
checks that the batch completes: every job SUCCEEDED, some document read by two workers, and
Prometheus saw longread_failovers_total{reason="worker_lost"} go up. Exit 0 when all holds.

  deploy/local/run.sh [--jobs N] [--documents-per-job N] [--keep] [--default-ports]
"""
import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster as local  # noqa: E402


def wait_until(what, predicate, timeout, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def prometheus_value(c, expr):
    result = c.query(expr)
    return float(result[0]["value"][1]) if result else None


def run(c, jobs, documents_per_job, victim="worker-1"):
    t0 = time.time()
    docs = local.documents(c.dir / "documents", jobs * documents_per_job)
    question = ["--question", "What does this document describe?"]
    job_ids = []
    for j in range(jobs):
        paths = [str(p) for p in docs[j * documents_per_job:(j + 1) * documents_per_job]]
        result = c.client("submit", "--name", f"batch-{j}", *question, *local.TINY_JOB, *paths)
        job_ids.append(result.stdout.strip())
    local.log(f"submitted {jobs} jobs ({len(docs)} documents): {' '.join(job_ids)}")
    # A read-only token may watch but not submit (the role check, through the real client).
    refused = c.client("submit", *question, str(docs[0]), role="read", check=False)
    assert refused.returncode == 3, f"a read token submitted a job: exit {refused.returncode}"

    lost_before = prometheus_value(c, 'longread_failovers_total{reason="worker_lost"}') or 0.0

    # The victim dies after its first checkpoint, with documents in hand: they must resume on the
    # other worker from that checkpoint.
    def victim_busy():
        s = c.scrape(victim)
        return (local.metric(s, "longread_worker_documents_in_flight") > 0
                and local.metric(s, "longread_checkpoint_bytes_total") > 0)

    wait_until(f"{victim} to checkpoint a document", victim_busy, timeout=300)
    in_flight = local.metric(c.scrape(victim), "longread_worker_documents_in_flight")
    c.processes[victim].signal(signal.SIGKILL)
    c.processes[victim].wait(10)
    t_kill = time.time()
    local.log(f"SIGKILL {victim} with {in_flight:.0f} documents in flight "
              f"({t_kill - t0:.1f} s into the batch)")

    for job_id in job_ids:
        watched = c.client("watch", "--quiet", job_id, check=False, timeout=600)
        assert watched.returncode == 0, f"watch {job_id}: exit {watched.returncode}\n{watched.stderr}"
    t_done = time.time()

    attempts = []
    for job_id in job_ids:
        job = json.loads(c.client("get", "--json", job_id, role="read").stdout)
        assert job["state"] == "JOB_STATE_SUCCEEDED", f"{job_id}: {job['state']}"
        for d in job["documents"]:
            assert d["state"] == "DOCUMENT_STATE_SUCCEEDED", f"{job_id} {d['name']}: {d['state']}"
            assert d["answer"], f"{job_id} {d['name']}: no answer"
            attempts.append(int(d["stats"]["attempts"]))
    assert max(attempts) >= 2, f"no document failed over (attempts {attempts})"

    # Prometheus scraped the coordinator's counter going up.
    lost_after = wait_until(
        "Prometheus to see the failover",
        lambda: (v := prometheus_value(c, 'longread_failovers_total{reason="worker_lost"}'))
        and v > lost_before and v, timeout=30)
    up = {r["metric"]["instance"]: r["value"][1] for r in c.query('up{job="longread-worker"}')}
    local.log(f"batch complete: {jobs} jobs SUCCEEDED, {sum(a >= 2 for a in attempts)} of "
              f"{len(attempts)} documents resumed on the other worker; "
              f"failovers_total{{reason=\"worker_lost\"}} {lost_before:.0f} -> {lost_after:.0f}; "
              f"up{{job=\"longread-worker\"}} {up}")
    local.log(f"timings: kill at {t_kill - t0:.1f} s, batch done at {t_done - t0:.1f} s")
    return {"jobs": job_ids, "kill_seconds": t_kill - t0, "done_seconds": t_done - t0}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.environ.get("LONGREAD_BUILD_DIR", "build"))
    parser.add_argument("--model", default=os.environ.get(
        "LONGREAD_MODEL", str(local.REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--documents-per-job", type=int, default=2)
    parser.add_argument("--default-ports", action="store_true",
                        help="the ports of deploy/prometheus/prometheus.yml (default: free ones)")
    parser.add_argument("--keep", action="store_true", help="keep the directory and logs")
    args = parser.parse_args()
    if not Path(args.model).is_file():
        print(f"no model at {args.model} (scripts/setup.sh fetches it)", file=sys.stderr)
        return 77
    if shutil.which("prometheus") is None:
        print("no prometheus (Debian's package: apt-get install prometheus)", file=sys.stderr)
        return 77
    start = time.time()
    c = local.Cluster(args.build, args.model, free=not args.default_ports)
    c.keep = args.keep
    with c:
        run(c, args.jobs, args.documents_per_job)
    local.log(f"total {time.time() - start:.1f} s (start-up included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
