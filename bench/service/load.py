"""The service load benchmark (run through bench/service/run.sh)."""

import argparse
import asyncio
import datetime
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "services", "clients"))
sys.path.insert(0, os.path.join(ROOT, "services", "python_client"))
import grpc  # noqa: E402

from cluster import Cluster, find_binaries  # noqa: E402
from longread_client import Client  # noqa: E402
from longread_client.client import pb, pb_grpc  # noqa: E402

# Real text of this repository; each cut to --doc-bytes at a line end.
SOURCES = ["README.md", "docs/ARCHITECTURE.md", "docs/SERVICE.md", "cache/FORMAT.md",
           "bench/quality/README.md", "proto/README.md", "engine/scorer/weights/README.md",
           "tests/fixtures/oracle/README.md"]


def documents(doc_bytes):
    docs = []
    for rel in SOURCES:
        path = os.path.join(ROOT, rel)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            data = f.read(doc_bytes)
        cut = data.rfind(b"\n")
        docs.append((rel, data[:cut + 1] if cut > doc_bytes // 2 else data))
    return docs


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load_phase(address, jobs, clients, options):
    """`clients` threads, each submitting a job and watching it to the end, until none is left."""
    todo = queue.Queue()
    for job in jobs:
        todo.put(job)
    results, errors, lock = [], [], threading.Lock()

    def client_loop():
        client = Client(address)
        while True:
            try:
                name, data = todo.get_nowait()
            except queue.Empty:
                break
            start = time.monotonic()
            first = None
            try:
                response = client.submit([(name, data)], options=options)
                state, tokens, answer = None, 0, ""
                for event in client.watch(response.job_id):
                    if first is None:
                        first = time.monotonic()
                    if event.HasField("document_done"):
                        tokens = event.document_done.stats.document_tokens
                        answer = event.document_done.answer
                    if event.HasField("job_done"):
                        state = event.job_done.state
                end = time.monotonic()
                if state != 3:  # JOB_STATE_SUCCEEDED
                    raise RuntimeError(f"job {response.job_id} ended in state {state}")
                with lock:
                    results.append({"document": name, "job_id": response.job_id,
                                    "tokens": tokens, "first_event_s": first - start,
                                    "answer_s": end - start, "answer": answer})
            except Exception as e:  # counted, not fatal: the benchmark reports errors
                with lock:
                    errors.append(f"{name}: {e!r}")
        client.close()

    start = time.monotonic()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, time.monotonic() - start


def embedded_phase(cli, model, docs, lanes, threads, options, tmp):
    """`longread run` on every job's document, laid out as the service reads them: `lanes`
    processes at a time (one per worker), each with the workers' thread count, taking the next
    document when one ends. Returns per-document results and the phase's wall time."""
    flags = {"memory_k": "--memory-k", "window": "--window", "sinks": "--sinks",
             "segment_tokens": "--segment-tokens", "block_tokens": "--block-tokens",
             "recall_blocks": "--recall-blocks", "max_new_tokens": "--max-tokens"}
    args = []
    for k, v in options.items():
        args += [flags[k], str(v)]
    todo = queue.Queue()
    for i, (name, data) in enumerate(docs):
        path = os.path.join(tmp, f"{i}-" + name.replace("/", "_"))
        with open(path, "wb") as f:
            f.write(data)
        todo.put((i, name, path))
    out, errors, lock = [], [], threading.Lock()

    def lane(n):
        while True:
            try:
                i, name, path = todo.get_nowait()
            except queue.Empty:
                return
            start = time.monotonic()
            # Each lane its own cache dir: two runs may not share one RocksDB.
            r = subprocess.run([cli, "run", "--model", model, "--threads", str(threads),
                                "--quiet", "--json", "--cache-dir",
                                os.path.join(tmp, f"cache{n}"), *args, path],
                               capture_output=True, text=True)
            wall = time.monotonic() - start
            with lock:
                if r.returncode != 0:
                    errors.append(f"longread run {name}: {r.returncode} {r.stderr[-500:]}")
                    continue
                j = json.loads(r.stdout)
                out.append({"index": i, "document": name, "lane": n,
                            "tokens": j["document_tokens"], "wall_s": wall,
                            "engine_s": j["read_seconds"] + j["recall_seconds"]
                            + j["generate_seconds"], "answer": j["answer"]})

    def children_cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    start, cpu0 = time.monotonic(), children_cpu()
    workers = [threading.Thread(target=lane, args=(n,)) for n in range(lanes)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    # The runs are this process's only children reaped in the phase (the cluster's still run).
    return sorted(out, key=lambda r: r["index"]), time.monotonic() - start, children_cpu() - cpu0


async def watchers_phase(address, job_id, watchers, channels=10):
    """`watchers` concurrent WatchJob streams on one job, over `channels` connections."""
    chans = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    stubs = [pb_grpc.JobServiceStub(c) for c in chans]
    counts, errors = [], []

    async def watch(i):
        n = 0
        try:
            async for event in stubs[i % channels].WatchJob(pb.WatchJobRequest(job_id=job_id)):
                n += 1
                if event.HasField("job_done"):
                    break
            counts.append(n)
        except grpc.RpcError as e:
            errors.append(f"{e.code()}: {e.details()}")

    start = time.monotonic()
    await asyncio.gather(*(watch(i) for i in range(watchers)))
    elapsed = time.monotonic() - start
    for c in chans:
        await c.close()
    return counts, errors, elapsed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build-dir", default="build")
    p.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--doc-bytes", type=int, default=2500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-threads", type=int, default=1)
    p.add_argument("--embedded-threads", type=int, default=0,
                   help="threads per longread run (default: --worker-threads)")
    p.add_argument("--embedded-lanes", type=int, default=0,
                   help="longread run processes at once (default: --workers)")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--options", default="")
    p.add_argument("--notes", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--command", default=" ".join(sys.argv))
    a = p.parse_args()
    options = {k: int(v) for k, v in (kv.split("=") for kv in a.options.split(",") if kv)}
    # Like for like by default: embedded mode gets the same processes x threads as the workers.
    a.embedded_threads = a.embedded_threads or a.worker_threads
    a.embedded_lanes = a.embedded_lanes or a.workers
    docs = documents(a.doc_bytes)
    jobs = [docs[i % len(docs)] for i in range(a.jobs)]
    used = docs[:min(len(docs), a.jobs)]
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    cli = find_binaries(a.build_dir)["cli"]

    import tempfile
    with tempfile.TemporaryDirectory(prefix="longread-bench-") as tmp, \
            Cluster(a.build_dir, a.model, workers=a.workers, threads=a.worker_threads,
                    capacity=4) as cluster:
        print(f"service: coordinator {cluster.address}, {a.workers} workers x "
              f"{a.worker_threads} thread(s); {a.jobs} jobs, {a.clients} clients", flush=True)
        # CPU time of every process of the phase: the service's own, and the Python clients',
        # which share this machine's cores with the workers (the embedded phase has none).
        service_pids = [cluster.coordinator.pid] + [w.pid for w in cluster.worker_procs]
        service_cpu0 = [proc_cpu_seconds(pid) for pid in service_pids]
        clients_cpu0 = time.process_time()
        results, errors, load_wall = load_phase(cluster.address, jobs, a.clients, options)
        clients_cpu = time.process_time() - clients_cpu0
        service_cpu = [proc_cpu_seconds(pid) - c for pid, c in zip(service_pids, service_cpu0)]
        load_mid = os.getloadavg()
        print(f"embedded: {a.embedded_lanes} x longread run --threads {a.embedded_threads} "
              f"at once on the same {len(jobs)} documents", flush=True)
        embedded, embedded_wall, embedded_cpu = embedded_phase(
            cli, a.model, jobs, a.embedded_lanes, a.embedded_threads, options, tmp)

        pid = cluster.coordinator.pid
        client = Client(cluster.address)
        watch_doc = docs[0]
        cpu0 = proc_cpu_seconds(pid)
        rss0 = proc_rss_kb(pid, "VmRSS")
        peak = [rss0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc_rss_kb(pid, "VmRSS"))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        response = client.submit([watch_doc], options=options)
        counts, watch_errors, watch_wall = asyncio.run(
            watchers_phase(cluster.address, response.job_id, a.watchers))
        stop.set()
        sampler.join()
        cpu1 = proc_cpu_seconds(pid)
        job_events = client.get(response.job_id).events
        hwm = proc_rss_kb(pid, "VmHWM")
        client.close()

    tokens = sum(r["tokens"] for r in results)
    service_tps = tokens / load_wall if load_wall > 0 else 0
    emb_tokens = sum(r["tokens"] for r in embedded)
    # Engine time: each lane's read + recall + generate, the busiest lane's being the phase's
    # (process start and model loading excluded; the service loads its model once).
    lane_engine = [sum(r["engine_s"] for r in embedded if r["lane"] == n)
                   for n in range(a.embedded_lanes)]
    emb_engine = max(lane_engine) if lane_engine else 0
    emb_wall = embedded_wall
    emb_answers = {r["document"]: r["answer"] for r in embedded}
    same_answers = sum(1 for r in results if r["answer"] == emb_answers.get(r["document"]))
    first = [r["first_event_s"] for r in results]
    answer = [r["answer_s"] for r in results]
    complete = sum(1 for c in counts if c == job_events)
    report = {
        "bench": "service-load",
        "device": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": a.command,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after_service_phase": [round(x, 2) for x in load_mid],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "notes": a.notes,
        "config": {"clients": a.clients, "jobs": a.jobs, "doc_bytes": a.doc_bytes,
                   "documents": [n for n, _ in used], "workers": a.workers,
                   "worker_threads": a.worker_threads, "embedded_threads": a.embedded_threads,
                   "embedded_lanes": a.embedded_lanes,
                   "options": options, "watchers": a.watchers},
        "load": {
            "wall_seconds": round(load_wall, 3), "jobs_ok": len(results), "errors": len(errors),
            "error_messages": errors[:10],
            "jobs_per_second": round(len(results) / load_wall, 4) if load_wall else 0,
            "first_event_seconds": {"p50": percentile(first, 50), "p99": percentile(first, 99)},
            "answer_seconds": {"p50": percentile(answer, 50), "p99": percentile(answer, 99)},
            "document_tokens": tokens,
            "service_tokens_per_second": round(service_tps, 2),
            "answers_equal_to_embedded": same_answers,
            "cpu_seconds": {"coordinator": round(service_cpu[0], 3),
                            "workers": [round(c, 3) for c in service_cpu[1:]],
                            "python_clients": round(clients_cpu, 3)},
            # Coordinator + workers (the clients are the benchmark's, not the service's).
            "tokens_per_cpu_second": round(tokens / sum(service_cpu), 2) if sum(service_cpu)
            else 0,
        },
        "embedded": {
            "command": f"{a.embedded_lanes} x longread run --threads {a.embedded_threads} at "
                       "once, one process per document, each lane taking the next document",
            "lane_engine_seconds": [round(x, 3) for x in lane_engine],
            # CPU time of the runs (model loading included): less sensitive to other load than
            # any wall time.
            "cpu_seconds": round(embedded_cpu, 3),
            "tokens_per_cpu_second": round(emb_tokens / embedded_cpu, 2) if embedded_cpu else 0,
            "document_tokens": emb_tokens,
            "engine_seconds": round(emb_engine, 3), "wall_seconds": round(emb_wall, 3),
            "tokens_per_second_engine": round(emb_tokens / emb_engine, 2) if emb_engine else 0,
            "tokens_per_second_wall": round(emb_tokens / emb_wall, 2) if emb_wall else 0,
        },
        "watchers": {
            "watchers": a.watchers, "completed_all_events": complete,
            "errors": len(watch_errors), "error_messages": watch_errors[:10],
            "job_events": job_events, "wall_seconds": round(watch_wall, 3),
            "coordinator_cpu_seconds": round(cpu1 - cpu0, 3),
            "coordinator_rss_kb_before": rss0, "coordinator_rss_kb_peak_sampled": peak[0],
            "coordinator_vm_hwm_kb": hwm,
        },
    }
    e = report["embedded"]
    report["ratio_service_to_embedded"] = {
        "vs_engine_time": round(service_tps / e["tokens_per_second_engine"], 3)
        if e["tokens_per_second_engine"] else None,
        "vs_wall_time": round(service_tps / e["tokens_per_second_wall"], 3)
        if e["tokens_per_second_wall"] else None,
        "vs_cpu_time": round(report["load"]["tokens_per_cpu_second"] / e["tokens_per_cpu_second"],
                             3) if e["tokens_per_cpu_second"] else None,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    L, W = report["load"], report["watchers"]
    rows = [
        ("jobs ok / errors", f"{L['jobs_ok']} / {L['errors']}"),
        ("jobs/s", f"{L['jobs_per_second']:.3f}"),
        ("time to first event p50 / p99 (s)",
         f"{L['first_event_seconds']['p50']:.3f} / {L['first_event_seconds']['p99']:.3f}"
         if first else "-"),
        ("time to answer p50 / p99 (s)",
         f"{L['answer_seconds']['p50']:.2f} / {L['answer_seconds']['p99']:.2f}" if answer else "-"),
        ("service tokens/s", f"{L['service_tokens_per_second']:.1f}"),
        ("CPU s: coordinator / workers / Python clients",
         f"{L['cpu_seconds']['coordinator']:.1f} / "
         f"{' + '.join(f'{c:.1f}' for c in L['cpu_seconds']['workers'])} / "
         f"{L['cpu_seconds']['python_clients']:.1f}"),
        ("embedded tokens/s (engine time / wall)",
         f"{e['tokens_per_second_engine']:.1f} / {e['tokens_per_second_wall']:.1f}"),
        ("ratio service / embedded (engine / wall)",
         f"{report['ratio_service_to_embedded']['vs_engine_time']} / "
         f"{report['ratio_service_to_embedded']['vs_wall_time']}"),
        ("tokens per CPU second: service / embedded (ratio)",
         f"{L['tokens_per_cpu_second']:.1f} / {e['tokens_per_cpu_second']:.1f} "
         f"({report['ratio_service_to_embedded']['vs_cpu_time']})"),
        ("answers equal to embedded", f"{L['answers_equal_to_embedded']} / {L['jobs_ok']}"),
        (f"{a.watchers} watchers: complete / errors",
         f"{W['completed_all_events']} / {W['errors']} ({W['job_events']} events each)"),
        ("coordinator CPU during watchers (s)", f"{W['coordinator_cpu_seconds']:.2f}"),
        ("coordinator RSS before / peak (MiB)",
         f"{W['coordinator_rss_kb_before'] / 1024:.1f} / "
         f"{W['coordinator_rss_kb_peak_sampled'] / 1024:.1f}"),
        ("load average before / after", f"{report['load_average_before']} / "
                                        f"{report['load_average_after']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"wrote {a.out}")
    return 0 if not errors and not watch_errors else 1


if __name__ == "__main__":
    sys.exit(main())
