#!/usr/bin/env python3
"""GPU workers on one machine: scaling and failover, measured (issue 18).

Starts a coordinator and workers as separate processes on loopback, sends one batch of documents
of mixed lengths through the real `longread` client (`submit`, `watch --jsonl`, `get --json`), and
runs three phases on fresh processes (a new coordinator database each time):

  one   the batch on ONE worker: the baseline, and the reference answers;
  all   the same batch on every worker: tokens/s per worker and in all, the scaling ratio;
  kill  the same batch on every worker, one worker SIGKILLed mid-batch (after its first
        checkpoint): every answer must equal the reference byte for byte; the work redone
        (tokens re-read) and the time lost against `all` are measured.

Workers: one per visible GPU times --workers-per-gpu (CUDA_VISIBLE_DEVICES names each worker's
GPU), or --workers N for CPU workers. The documents are generated deterministically from real
text (the corpus files, cycled from a per-document offset and cut at a line end), so the whole
input is reproducible; their hashes are in the results.

Writes the results JSON (device, date, command, every number) and prints a table. Exit status:
0 when every job succeeded and every answer equals the reference; 1 otherwise; 2 bad usage.
Uses only the standard library (the device machine has no grpcio).
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The one-machine cluster's helpers (standard library only, as this script must stay for the GPU
# machine): ports, logging and /metrics parsing are the same there and here.
sys.path.insert(0, str(REPO / "deploy" / "local"))
from cluster import free_ports, log, metric, scrape as scrape_page  # noqa: E402


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- documents ------------------------------------------------------------------------------------
def corpus_files(specs):
    files = []
    for spec in specs:
        path = Path(spec)
        if not path.is_absolute():
            path = REPO / path
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix in (".md", ".txt"))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"corpus: no file or directory {spec}")
    if not files:
        raise SystemExit("corpus: no text files")
    return files


def target_lengths(count, low, high, seed):
    """count lengths spread evenly on a log scale from low to high, in a seeded shuffled order."""
    if count == 1:
        lengths = [low]
    else:
        lengths = [round(low * (high / low) ** (i / (count - 1))) for i in range(count)]
    random.Random(seed).shuffle(lengths)
    return lengths


def make_documents(directory, corpus, lengths, bytes_per_token):
    """Document i: the corpus from offset i * (len / count), cycled until it holds
    bytes_per_token * lengths[i] bytes, cut at a line end."""
    text = b"".join(f.read_bytes().rstrip(b"\n") + b"\n\n" for f in corpus)
    directory.mkdir(parents=True, exist_ok=True)
    documents = []
    for i, tokens in enumerate(lengths):
        want = int(tokens * bytes_per_token)
        start = (i * len(text)) // max(1, len(lengths))
        start = text.find(b"\n", start) + 1
        body = bytearray(text[start:])
        while len(body) < want:
            body += text
        cut = body.rfind(b"\n", 0, want)
        body = bytes(body[:cut + 1 if cut > 0 else want])
        path = directory / f"doc-{i:03d}-{tokens // 1000}k.txt"
        if not path.exists() or path.read_bytes() != body:
            path.write_bytes(body)
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        documents.append({"name": str(shown), "path": str(shown), "bytes": len(body),
                          "target_tokens": tokens, "sha256": sha256(body)})
    return documents


# -- processes, ports, metrics --------------------------------------------------------------------
def scrape(port):
    """{(name, frozenset(labels)): value} from one /metrics page; {} when it does not answer (a
    killed worker)."""
    try:
        return scrape_page(port)
    except OSError:
        return {}


class Process:
    def __init__(self, name, args, directory, env=None):
        self.name = name
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.args = args
        with open(self.directory / "stdout", "ab") as out, \
                open(self.directory / "stderr", "ab") as err:
            self.popen = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                          env={**os.environ, **(env or {})})

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        """SIGKILL: a phase's numbers are taken before its processes stop, and a graceful drain
        (seconds per worker) would only lengthen the run."""
        if self.alive():
            self.popen.kill()
        self.popen.wait()

    def tail(self, lines=20):
        text = (self.directory / "stderr").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def wait_for(what, predicate, timeout, processes=(), interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        for p in processes:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited ({p.popen.returncode}) while waiting for "
                                   f"{what}:\n{p.tail()}")
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def gpu_names():
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.stdout.splitlines() if line.startswith("GPU ")]


def gpu_memory_by_pid():
    """{pid: MiB} of the compute processes nvidia-smi sees; {} without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    usage = {}
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            usage[int(parts[0])] = int(parts[1])
    return usage


# -- one phase ------------------------------------------------------------------------------------
class Phase:
    def __init__(self, args, name, workers, directory):
        self.args = args
        self.name = name
        self.worker_specs = workers  # [(name, gpu or None)]
        self.dir = directory
        self.workers = {}
        self.worker_metrics_port = {}
        self.coordinator = None
        self.samples = []  # (seconds since submit, {worker: tokens read}), from the events
        self.lock = threading.Lock()
        self.worker_tokens = {}  # worker address -> document tokens it read (progress events)
        self.gpu_mib = {}  # worker -> peak MiB seen by nvidia-smi
        self.device_bytes = {}  # worker -> peak longread_device_memory_bytes
        self.stop_sampling = threading.Event()
        self.killed = None
        self.reading = {}  # document index -> (worker address, tokens read, total), from events
        self.worker_address = {}

    def binary(self, name):
        return str(Path(self.args.build_dir).resolve() / {
            "coordinator": "services/coordinator/longread-coordinator",
            "worker": "services/worker/longread-worker",
            "longread": "services/cli/longread"}[name])

    def start(self, attempts=3):
        """Starts the processes; again on fresh ports when one could not bind its metrics port
        (a port found free can be taken by another process before ours binds it)."""
        for attempt in range(attempts):
            try:
                return self.start_once()
            except RuntimeError as e:
                if "cannot serve /metrics" not in str(e) or attempt == attempts - 1:
                    raise
                log(f"{self.name}: a metrics port was taken; starting again on others")
                self.stop()
                self.workers, self.worker_metrics_port, self.coordinator = {}, {}, None
                shutil.rmtree(self.dir, ignore_errors=True)

    def start_once(self):
        ports = iter(free_ports(2 + len(self.worker_specs)))
        for name, gpu in self.worker_specs:
            metrics_port = next(ports) if self.args.worker_metrics else None
            env = {"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}
            d = self.dir / name
            self.workers[name] = Process(name, [
                self.binary("worker"), "--listen", "127.0.0.1:0",
                "--metrics-listen", f"127.0.0.1:{metrics_port}" if metrics_port else "",
                "--model", self.args.model,
                "--device", self.args.device, "--threads", str(self.args.worker_threads),
                "--capacity", str(self.args.capacity), "--cache-dir", str(d / "cache"),
                "--drain-seconds", "5", "--listen-port-file", str(d / "port"),
                "--log-format", "json"], d, env)
            self.worker_metrics_port[name] = metrics_port
        worker_ports = {}
        for name, p in self.workers.items():
            port_file = self.dir / name / "port"
            wait_for(f"{name} to serve", lambda f=port_file: f.exists() and f.read_text().strip(),
                     self.args.start_timeout, [p])
            worker_ports[name] = int((self.dir / name / "port").read_text())
            self.worker_address[name] = f"127.0.0.1:{worker_ports[name]}"
        self.coordinator_port_file = self.dir / "coordinator" / "port"
        self.coordinator_metrics_port = next(ports)
        self.coordinator = Process("coordinator", [
            self.binary("coordinator"), "--listen", "127.0.0.1:0",
            "--metrics-listen", f"127.0.0.1:{self.coordinator_metrics_port}",
            "--db", str(self.dir / "coordinator" / "db"), "--model", self.args.model,
            "--workers", ",".join(f"127.0.0.1:{worker_ports[n]}" for n in self.workers),
            "--checkpoint-seconds", str(self.args.checkpoint_seconds),
            "--port-file", str(self.coordinator_port_file), "--log-format", "json"],
            self.dir / "coordinator")
        everyone = [self.coordinator, *self.workers.values()]
        wait_for("the coordinator to serve",
                 lambda: self.coordinator_port_file.exists()
                 and self.coordinator_port_file.read_text().strip(), self.args.start_timeout,
                 everyone)
        self.coordinator_port = int(self.coordinator_port_file.read_text())
        wait_for("every worker healthy",
                 lambda: metric(scrape(self.coordinator_metrics_port), "longread_workers",
                                state="healthy") >= len(self.workers),
                 self.args.start_timeout, everyone)

    def log_tails(self):
        return {p.name: p.tail(40) for p in [self.coordinator, *self.workers.values()]
                if p is not None}

    def stop(self):
        self.stop_sampling.set()
        for p in [self.coordinator, *self.workers.values()]:
            if p is not None:
                p.stop()

    def client(self, command, *rest, timeout=3600):
        args = [self.binary("longread"), command,
                "--coordinator", f"127.0.0.1:{self.coordinator_port}", *rest]
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def sample(self, t0):
        """Every second: each live worker's tokens read, and its GPU memory."""
        while not self.stop_sampling.is_set():
            now = time.time() - t0
            with self.lock:
                tokens = {name: self.worker_tokens.get(address, 0)
                          for name, address in self.worker_address.items()}
            self.samples.append((now, tokens))
            for name, port in self.worker_metrics_port.items():
                s = scrape(port) if port and self.workers[name].alive() else {}
                if s:
                    self.device_bytes[name] = max(self.device_bytes.get(name, 0),
                                                  metric(s, "longread_device_memory_bytes"))
            by_pid = gpu_memory_by_pid()
            for name, p in self.workers.items():
                if p.pid in by_pid:
                    self.gpu_mib[name] = max(self.gpu_mib.get(name, 0), by_pid[p.pid])
            self.stop_sampling.wait(1.0)

    def coordinator_events(self, *names):
        """The coordinator's JSON log lines whose event is one of names."""
        events = []
        try:
            text = (self.coordinator.directory / "stderr").read_text(errors="replace")
        except OSError:
            return events
        for line in text.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") in names:
                events.append(e)
        return events

    def victim_checkpointed_reading(self, victim):
        """{document index: checkpoint tokens} of the documents the victim is reading now (not at
        the end) of which the coordinator has stored a checkpoint that the victim sent."""
        address = self.worker_address[victim]
        stored = {}
        for e in self.coordinator_events("checkpoint_stored"):
            if e.get("worker") == address:
                stored[int(e["document"])] = int(e["document_tokens"])
        with self.lock:
            return {i: stored[i] for i, (worker, read, total) in self.reading.items()
                    if worker == address and 0 < read < total and i in stored}

    def kill_when_ready(self, victim, not_before, t0):
        """SIGKILL the victim, not before not_before s, while it reads a document of which the
        coordinator holds a checkpoint from it: that document must resume elsewhere from there."""
        while not self.stop_sampling.is_set():
            ready = (self.victim_checkpointed_reading(victim)
                     if time.time() - t0 >= not_before else {})
            if ready:
                self.workers[victim].popen.send_signal(signal.SIGKILL)
                address = self.worker_address[victim]
                with self.lock:
                    reading = {i: list(v[1:]) for i, v in self.reading.items() if v[0] == address}
                    tokens = self.worker_tokens.get(address, 0)
                self.killed = {"worker": victim, "seconds": time.time() - t0,
                               "documents_held": reading, "checkpoint_tokens": ready,
                               "tokens_read_before_kill": tokens}
                log(f"{self.name}: SIGKILL {victim} at {self.killed['seconds']:.1f} s "
                    f"(documents held, tokens read/total: {reading}; checkpointed at {ready})")
                return
            time.sleep(0.2)

    def checkpoint_summary(self):
        """The checkpoints the coordinator stored in this phase, and its failovers."""
        stored = self.coordinator_events("checkpoint_stored")
        seconds = sorted(float(e.get("seconds", 0)) for e in stored)
        total = sum(int(e.get("bytes", 0)) for e in stored)
        return {
            "stored": len(stored), "bytes_total": total,
            "bytes_mean": total / len(stored) if stored else 0,
            "seconds_mean": sum(seconds) / len(seconds) if seconds else 0,
            "seconds_max": seconds[-1] if seconds else 0,
            "failovers": [{k: e.get(k) for k in ("document", "worker", "reason", "tokens_read",
                                                 "checkpoint_tokens")}
                          for e in self.coordinator_events("failover")],
            "resumed": [{k: e.get(k) for k in ("document", "worker", "attempt",
                                               "resume_from_tokens", "tokens_reread")}
                        for e in self.coordinator_events("document_resumed")],
        }

    def run(self, documents, job_flags, kill=None):
        """Sends the batch as one job and follows it; returns the phase's numbers."""
        self.start()
        base_metric = {n: metric(scrape(p), "longread_tokens_read_total")
                       for n, p in self.worker_metrics_port.items() if p}
        t0 = time.time()
        sampler = threading.Thread(target=self.sample, args=(t0,), daemon=True)
        sampler.start()
        submitted = self.client("submit", "--name", f"gpu-cluster-{self.name}", "--quiet",
                                *job_flags, *[d["path"] for d in documents])
        if submitted.returncode != 0:
            raise RuntimeError(f"submit: exit {submitted.returncode}\n{submitted.stderr}")
        job_id = submitted.stdout.strip()
        t_submitted = time.time() - t0
        log(f"{self.name}: job {job_id} submitted in {t_submitted:.1f} s "
            f"({len(documents)} documents, {len(self.workers)} workers)")
        killer = None
        if kill:
            killer = threading.Thread(target=self.kill_when_ready,
                                      args=(kill["victim"], kill["not_before"], t0), daemon=True)
            killer.start()
        watch = subprocess.Popen(
            [self.binary("longread"), "watch", "--jsonl", "--coordinator",
             f"127.0.0.1:{self.coordinator_port}", job_id],
            stdout=subprocess.PIPE, stderr=open(self.dir / "watch.stderr", "wb"), text=True,
            cwd=REPO)
        done_at = {}
        assigned = []
        job_state = None
        errors = []
        for line in watch.stdout:
            event = json.loads(line)
            now = time.time() - t0
            if "progress" in event:
                pr = event["progress"]
                i = pr.get("document_index", 0)
                with self.lock:
                    worker, before, _ = self.reading.get(i, ("", 0, 0))
                    read = int(pr.get("tokens_read", 0))
                    self.worker_tokens[worker] = (self.worker_tokens.get(worker, 0)
                                                  + max(0, read - before))
                    self.reading[i] = (worker, read, int(pr.get("total_tokens", 0)))
            elif "assigned" in event:
                a = event["assigned"]
                i = a.get("document_index", 0)
                with self.lock:
                    self.reading[i] = (a.get("worker", ""), int(a.get("resume_from_tokens", 0)),
                                       self.reading.get(i, ("", 0, 0))[2])
                assigned.append({"seconds": now, "document_index": a.get("document_index", 0),
                                 "worker": a.get("worker", ""), "attempt": a.get("attempt", 0),
                                 "resume_from_tokens": int(a.get("resume_from_tokens", 0))})
            elif "document_done" in event:
                done_at[event["document_done"].get("document_index", 0)] = now
            elif "error" in event:
                errors.append(event["error"])
            elif "job_done" in event:
                job_state = event["job_done"].get("state")
        watch_rc = watch.wait()
        t_last = time.time() - t0
        self.stop_sampling.set()
        sampler.join()
        if killer:
            killer.join(5)
        got = self.client("get", "--json", job_id)
        if got.returncode != 0:
            raise RuntimeError(f"get: exit {got.returncode}\n{got.stderr}")
        job = json.loads(got.stdout)
        coordinator = scrape(self.coordinator_metrics_port)
        checkpoints = self.checkpoint_summary()
        # A cross-check of the events' count: each live worker's own counter.
        by_metric = {n: metric(scrape(p), "longread_tokens_read_total") - base_metric[n]
                     for n, p in self.worker_metrics_port.items()
                     if p and self.workers[n].alive()}
        self.stop()

        docs = []
        for d in job.get("documents", []):
            stats = d.get("stats", {})
            docs.append({
                "name": d["name"], "state": d.get("state"), "worker": d.get("worker", ""),
                "total_tokens": int(d.get("total_tokens", 0)),
                "answer": d.get("answer", ""),
                "answer_sha256": sha256(d.get("answer", "").encode()),
                "attempts": int(stats.get("attempts", 0)),
                "tokens_reread": int(stats.get("tokens_reread", 0)),
                "read_seconds": stats.get("read_seconds", 0.0),
                "generate_seconds": stats.get("generate_seconds", 0.0),
                "generated_tokens": int(stats.get("generated_tokens", 0)),
                "done_seconds": done_at.get(int(d.get("index", 0))),
            })
        total_tokens = sum(d["total_tokens"] for d in docs)
        first_assigned = min((a["seconds"] for a in assigned), default=0.0)
        per_worker = {}
        for name in self.workers:
            read = self.worker_tokens.get(self.worker_address[name], 0)
            answered = [d for d in docs if d["worker"] == self.worker_address[name]]
            per_worker[name] = {
                "gpu": dict(self.worker_specs)[name],
                "tokens_read": read,
                "tokens_read_by_its_metric": by_metric.get(name),
                "tokens_per_second": read / t_last if t_last else 0.0,
                "documents_answered": len(answered),
                "gpu_memory_peak_mib": self.gpu_mib.get(name),
                "device_memory_bytes_peak": self.device_bytes.get(name),
                "killed": bool(self.killed and self.killed["worker"] == name),
            }
        result = {
            "phase": self.name, "job_id": job_id, "workers": len(self.workers),
            "job_state": job_state or job.get("state"), "watch_exit": watch_rc,
            "errors": errors, "submit_seconds": t_submitted,
            "first_assigned_seconds": first_assigned,
            "seconds_to_last_answer": t_last, "documents": docs, "total_tokens": total_tokens,
            "tokens_per_second": total_tokens / t_last if t_last else 0.0,
            "reading_tokens_per_second":
                total_tokens / (t_last - first_assigned) if t_last > first_assigned else 0.0,
            "tokens_read_by_workers": sum(w["tokens_read"] for w in per_worker.values()),
            "per_worker": per_worker, "assignments": assigned, "killed": self.killed,
            "checkpoints": checkpoints,
            "coordinator": {
                "tokens_read_total": metric(coordinator, "longread_tokens_read_total"),
                "failovers_worker_lost": metric(coordinator, "longread_failovers_total",
                                                reason="worker_lost"),
                "checkpoint_bytes_total": metric(coordinator, "longread_checkpoint_bytes_total"),
            },
            "tokens_per_second_timeline": [
                [round(t, 2), {k: int(v) for k, v in tok.items()}] for t, tok in self.samples],
        }
        result["tokens_reread"] = sum(d["tokens_reread"] for d in docs)
        log(f"{self.name}: {result['job_state']} in {t_last:.1f} s, {total_tokens} tokens, "
            f"{result['tokens_per_second']:.0f} tok/s")
        return result


# -- the whole run --------------------------------------------------------------------------------
def job_flags(options, max_new_tokens):
    flags = ["--task", "summarize", "--max-tokens", str(max_new_tokens)]
    names = {"memory_k": "--memory-k", "window": "--window", "sinks": "--sinks",
             "segment_tokens": "--segment-tokens", "block_tokens": "--block-tokens",
             "recall_blocks": "--recall-blocks"}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in names:
            raise SystemExit(f"--options: unknown {key} (known: {', '.join(names)})")
        flags += [names[key], value]
    return flags


def compare(reference, result):
    """Names of documents whose answer differs from the reference (or is missing)."""
    want = {d["name"]: d["answer"] for d in reference["documents"]}
    got = {d["name"]: d["answer"] for d in result["documents"]}
    return sorted(n for n in want if got.get(n) != want[n])


def print_table(results, out):
    rows = [("phase", "workers", "tokens", "last answer s", "tok/s all", "tok/s per worker",
             "GPU MiB per worker", "re-read", "answers = one")]
    for r in results["phases"]:
        pw = r["per_worker"]
        rows.append((
            r["phase"], str(r["workers"]), str(r["total_tokens"]),
            f"{r['seconds_to_last_answer']:.1f}", f"{r['tokens_per_second']:.0f}",
            " / ".join(f"{w['tokens_per_second']:.0f}" + ("†" if w["killed"] else "")
                       for w in pw.values()),
            " / ".join(str(w["gpu_memory_peak_mib"]) if w["gpu_memory_peak_mib"] is not None
                       else "-" for w in pw.values()),
            str(r["tokens_reread"]),
            "ref" if r["phase"] == "one" else
            f"{r['documents_equal']}/{len(r['documents'])}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for key, value in results.get("summary", {}).items():
        print(f"{key}: {value}")
    print(f"results: {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default="build")
    p.add_argument("--model", default=str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--workers", type=int, default=0,
                   help="worker count (default: visible GPUs x --workers-per-gpu; cpu: 2)")
    p.add_argument("--workers-per-gpu", type=int, default=1)
    p.add_argument("--worker-threads", type=int, default=1)
    p.add_argument("--capacity", type=int, default=4, help="documents read at once per worker")
    p.add_argument("--checkpoint-seconds", type=float, default=5.0)
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--min-tokens", type=int, default=32000)
    p.add_argument("--max-tokens", type=int, default=1000000)
    p.add_argument("--bytes-per-token", type=float, default=4.35,
                   help="bytes of corpus text per target token (4.35 measured for the default "
                        "corpus and model on documents of 20K-67K tokens; the real count is "
                        "taken from the coordinator)")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--corpus", nargs="+", default=["README.md", "docs"])
    p.add_argument("--data-dir", default="data/gpu-cluster",
                   help="where the documents are written (relative: to the repository)")
    p.add_argument("--options", default="", help="job options: memory_k=..,window=..,...")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--phases", default="one,all,kill")
    p.add_argument("--kill-after-fraction", type=float, default=0.4,
                   help="kill no earlier than this fraction of the `all` phase's time")
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--no-worker-metrics", dest="worker_metrics", action="store_false",
                   help="workers serve no /metrics (the numbers come from the job's events; "
                        "only longread_device_memory_bytes is lost)")
    p.add_argument("--out", required=True)
    p.add_argument("--command", default=" ".join(sys.argv))
    p.add_argument("--notes", default="")
    p.add_argument("--keep", action="store_true", help="keep the processes' directories")
    args = p.parse_args()

    phases = [x for x in args.phases.split(",") if x]
    if not set(phases) <= {"one", "all", "kill"}:
        raise SystemExit("--phases: one, all, kill")
    gpus = gpu_names() if args.device == "cuda" else []
    if args.device == "cuda" and not gpus:
        print("--device cuda: nvidia-smi -L lists no GPU", file=sys.stderr)
        return 2
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = ([g for g in visible.split(",") if g] if visible else
               [str(i) for i in range(len(gpus))]) if args.device == "cuda" else []
    if args.workers:
        count = args.workers
    else:
        count = len(gpu_ids) * args.workers_per_gpu if gpu_ids else 2
    # Workers fill the GPUs round-robin: with 2 GPUs and 2 per GPU, worker-0 and -2 share GPU 0.
    specs = [(f"worker-{i}", gpu_ids[i % len(gpu_ids)] if gpu_ids else None)
             for i in range(count)]
    if "kill" in phases and count < 2:
        print("the kill phase needs at least 2 workers", file=sys.stderr)
        return 2

    corpus = corpus_files(args.corpus)
    lengths = target_lengths(args.docs, args.min_tokens, args.max_tokens, args.seed)
    doc_dir = (REPO / args.data_dir) / (f"docs-{args.docs}-{args.min_tokens}-{args.max_tokens}-"
                                     f"{args.bytes_per_token:g}-{args.seed}")
    documents = make_documents(doc_dir, corpus, lengths, args.bytes_per_token)
    log(f"{len(documents)} documents of {min(lengths)}-{max(lengths)} target tokens, "
        f"{sum(d['bytes'] for d in documents) / 1e6:.1f} MB, in {doc_dir}")
    flags = job_flags(args.options, args.max_new_tokens)

    work = Path(tempfile.mkdtemp(prefix="longread-gpu-cluster-"))
    results = {
        "what": "issue 18: GPU workers on one machine, scaling and failover",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": args.command, "notes": args.notes,
        "git_revision": git_revision(),
        "device": {"gpus": gpus, "cpu": cpu_model(), "cores": os.cpu_count(),
                   "load_average_before": os.getloadavg()},
        "config": {k: v for k, v in vars(args).items() if k not in ("command", "notes", "out")},
        "workers": [{"name": n, "gpu": g} for n, g in specs],
        "job_flags": flags,
        "corpus": [{"file": str(f.relative_to(REPO)) if f.is_relative_to(REPO) else f.name,
                    "sha256": sha256(f.read_bytes())} for f in corpus],
        "documents": documents,
        "phases": [],
    }
    out = Path(args.out)

    def write():
        results["device"]["load_average_after"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")

    def interrupted(signum, frame):
        raise RuntimeError(f"interrupted by signal {signum}: the phases done so far are written")

    signal.signal(signal.SIGTERM, interrupted)
    ok = True
    reference = None
    by_phase = {}
    try:
        for name in phases:
            phase_specs = specs[:1] if name == "one" else specs
            kill = None
            if name == "kill":
                all_seconds = by_phase["all"]["seconds_to_last_answer"] if "all" in by_phase else 0
                kill = {"victim": specs[-1][0],
                        "not_before": args.kill_after_fraction * all_seconds}
            phase = Phase(args, name, phase_specs, work / name)
            try:
                r = phase.run(documents, flags, kill)
            except Exception:
                results.setdefault("failure_logs", {})[name] = phase.log_tails()
                raise
            finally:
                phase.stop()
                # The databases hold every checkpoint and archive block (gigabytes at real
                # sizes): gone after each phase; the logs stay until the end (or with --keep).
                for d in [work / name / "coordinator" / "db",
                          *[work / name / w / "cache" for w, _ in phase_specs]]:
                    shutil.rmtree(d, ignore_errors=True)
            if r["job_state"] != "JOB_STATE_SUCCEEDED" or r["watch_exit"] != 0 or r["errors"]:
                log(f"{name}: FAILED: state {r['job_state']}, watch exit {r['watch_exit']}, "
                    f"errors {r['errors']}")
                results.setdefault("failure_logs", {})[name] = phase.log_tails()
                ok = False
            if reference is None:
                reference = r
            differ = compare(reference, r)
            r["reference_phase"] = reference["phase"]
            r["documents_equal"] = len(r["documents"]) - len(differ)
            r["documents_differing"] = differ
            if differ:
                log(f"{name}: {len(differ)} answers differ from {reference['phase']}: {differ}")
                ok = False
            if name == "kill" and not r["killed"]:
                log("kill: the victim was never killed (it held no checkpointed document)")
                ok = False
            results["phases"].append(r)
            by_phase[name] = r
            write()
    except Exception as e:  # noqa: BLE001 -- the results so far are still written
        results["failure"] = f"{type(e).__name__}: {e}"
        log(f"FAILED: {results['failure']}")
        ok = False
    finally:
        results["summary"] = summarize(by_phase, results["phases"], ok)
        write()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if results["phases"]:
        print_table(results, out)
    return 0 if ok else 1


def summarize(by_phase, phases, ok):
    summary = {}
    summary["checkpoint_seconds_mean_max"] = {
        r["phase"]: [round(r["checkpoints"]["seconds_mean"], 2),
                     round(r["checkpoints"]["seconds_max"], 2)] for r in phases}
    summary["checkpoint_bytes_mean"] = {
        r["phase"]: round(r["checkpoints"]["bytes_mean"]) for r in phases}
    if "one" in by_phase and "all" in by_phase:
        summary["scaling_all_over_one"] = round(
            by_phase["all"]["tokens_per_second"] / by_phase["one"]["tokens_per_second"], 3)
    if "kill" in by_phase:
        k = by_phase["kill"]
        summary["kill_at_seconds"] = round(k["killed"]["seconds"], 2) if k["killed"] else None
        summary["documents_failed_over"] = sum(d["attempts"] >= 2 for d in k["documents"])
        summary["tokens_reread"] = k["tokens_reread"]
        summary["tokens_read_by_workers_minus_document_tokens"] = round(
            k["tokens_read_by_workers"] - k["total_tokens"])
        summary["failovers_worker_lost"] = k["coordinator"]["failovers_worker_lost"]
        summary["resumed_from_tokens"] = [r["resume_from_tokens"]
                                          for r in k["checkpoints"]["resumed"]]
        if "all" in by_phase:
            summary["time_lost_seconds"] = round(
                k["seconds_to_last_answer"] - by_phase["all"]["seconds_to_last_answer"], 2)
    summary["all_answers_identical"] = all(not r["documents_differing"]
                                           for r in phases)
    summary["ok"] = ok
    return summary


def git_revision():
    if os.environ.get("LONGREAD_REVISION"):  # a copy of the tree without .git
        return os.environ["LONGREAD_REVISION"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    sys.exit(main())
