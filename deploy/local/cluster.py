#!/usr/bin/env python3
"""A Longread cluster on one machine: a coordinator, two workers and Prometheus, each its own
process on loopback, with the production flags (TLS everywhere, mutual TLS to the workers, bearer
tokens, plaintext health ports, JSON logs). deploy/local/run.sh drives it; the tests under
tests/deploy/ start it too.

Certificates and tokens come from deploy/k8s/make-secrets.sh (namespace "local"), written into
the cluster's own directory. Prometheus scrapes with deploy/prometheus/prometheus.yml and its rule
files: only the targets (when the ports are not the defaults) and the intervals are rewritten.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "local"
WORKER_CERT_NAME = f"longread-worker-headless.{NAMESPACE}.svc.cluster.local"

# deploy/prometheus/prometheus.yml's ports (docs/SERVICE.md's defaults; the second worker +10).
DEFAULT_PORTS = {
    "coordinator": {"grpc": 50051, "health": 50052, "metrics": 9464},
    "worker-0": {"grpc": 50061, "health": 50062, "metrics": 9465},
    "worker-1": {"grpc": 50071, "health": 50072, "metrics": 9475},
    "prometheus": {"web": 9090},
}

# Tiny reading settings (a CPU core reads a document in seconds), sent with every job.
TINY_JOB = ["--memory-k", "64", "--window", "64", "--sinks", "4", "--segment-tokens", "128",
            "--block-tokens", "16", "--recall-blocks", "2", "--max-tokens", "24"]


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_ports(count):
    """Ports free now (bound and released together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def scrape(port):
    """One /metrics page as {(name, frozenset(labels)): value}."""
    samples = {}
    for line in http_get(f"http://127.0.0.1:{port}/metrics").splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def metric(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and want <= set(l))


class Process:
    """A child process; its stdout and stderr go to files in `directory`."""

    def __init__(self, name, args, directory):
        self.name = name
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.directory / "stderr"
        with open(self.directory / "stdout", "ab") as out, open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def alive(self):
        return self.popen.poll() is None

    def log_text(self):
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig):
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout):
        return self.popen.wait(timeout)

    def stop(self):
        if self.alive():
            self.popen.kill()
            self.popen.wait()


class Cluster:
    def __init__(self, build_dir, model, directory=None, free=True, scrape_interval="1s",
                 checkpoint_seconds=3.0, drain_seconds=60.0, capacity=2, threads=1,
                 prometheus=True):
        self.build_dir = Path(build_dir).resolve()
        self.model = str(Path(model).resolve())
        self.own_directory = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="longread-local-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scrape_interval = scrape_interval
        self.checkpoint_seconds = checkpoint_seconds
        self.drain_seconds = drain_seconds
        self.capacity = capacity
        self.threads = threads
        self.with_prometheus = prometheus
        if free:
            numbers = iter(free_ports(10))
            self.ports = {k: {p: next(numbers) for p in v} for k, v in DEFAULT_PORTS.items()}
        else:
            self.ports = json.loads(json.dumps(DEFAULT_PORTS))
        self.processes = {}
        self.keep = False  # keep the directory (logs, databases) after stop()
        self.secrets = self.dir / "secrets"

    # -- binaries and flags ---------------------------------------------------------------------
    def binary(self, name):
        path = {"longread-coordinator": "services/coordinator/longread-coordinator",
                "longread-worker": "services/worker/longread-worker",
                "longread": "services/cli/longread"}[name]
        return str(self.build_dir / path)

    def worker_args(self, name):
        p = self.ports[name]
        return [self.binary("longread-worker"),
                "--listen", f"127.0.0.1:{p['grpc']}",
                "--metrics-listen", f"127.0.0.1:{p['metrics']}",
                "--health-listen", f"127.0.0.1:{p['health']}",
                "--model", self.model, "--threads", str(self.threads), "--device", "cpu",
                "--capacity", str(self.capacity),
                "--cache-dir", str(self.dir / name / "cache"),
                "--drain-seconds", str(self.drain_seconds),
                "--tls-cert", str(self.secrets / "worker.crt"),
                "--tls-key", str(self.secrets / "worker.key"),
                "--tls-client-ca", str(self.secrets / "ca.crt"),
                "--listen-port-file", str(self.dir / name / "port"),
                "--log-format", "json"]

    def coordinator_args(self, db=None):
        p = self.ports["coordinator"]
        workers = ",".join(f"127.0.0.1:{self.ports[w]['grpc']}" for w in ("worker-0", "worker-1"))
        return [self.binary("longread-coordinator"),
                "--listen", f"127.0.0.1:{p['grpc']}",
                "--metrics-listen", f"127.0.0.1:{p['metrics']}",
                "--health-listen", f"127.0.0.1:{p['health']}",
                "--db", str(db or self.dir / "coordinator" / "db"),
                "--workers", workers,
                "--model", self.model,
                "--checkpoint-seconds", str(self.checkpoint_seconds),
                "--tls-cert", str(self.secrets / "coordinator.crt"),
                "--tls-key", str(self.secrets / "coordinator.key"),
                "--worker-tls-cert", str(self.secrets / "coordinator.crt"),
                "--worker-tls-key", str(self.secrets / "coordinator.key"),
                "--worker-tls-ca", str(self.secrets / "ca.crt"),
                # Workers are dialled by address here; on Kubernetes the headless Service's name
                # is both the target and the name checked.
                "--worker-tls-server-name", WORKER_CERT_NAME,
                "--auth-tokens", str(self.secrets / "auth-tokens"),
                "--port-file", str(self.dir / "coordinator" / "port"),
                "--log-format", "json"]

    def client_args(self, command, *args, role="write"):
        """`longread COMMAND` against this coordinator, with TLS and the role's token."""
        token_file = self.dir / f"token-{role}"
        return [self.binary("longread"), command,
                "--coordinator", f"127.0.0.1:{self.ports['coordinator']['grpc']}",
                "--tls-ca", str(self.secrets / "ca.crt"), "--tls-server-name", "localhost",
                "--token-file", str(token_file), *args]

    def client(self, command, *args, role="write", check=True, timeout=600):
        result = subprocess.run(self.client_args(command, *args, role=role), capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"longread {command} {' '.join(args)}: exit {result.returncode}\n"
                               f"{result.stderr}")
        return result

    # -- start and stop -------------------------------------------------------------------------
    def make_secrets(self):
        subprocess.run([str(REPO / "deploy/k8s/make-secrets.sh"), "--namespace", NAMESPACE,
                        "--out", str(self.secrets)], check=True, capture_output=True)
        for line in (self.secrets / "auth-tokens").read_text().splitlines():
            token, role = line.split()
            path = self.dir / f"token-{role}"
            path.write_text(token + "\n")
            path.chmod(0o600)

    def start_worker(self, name):
        (self.dir / name / "port").unlink(missing_ok=True)
        self.processes[name] = Process(name, self.worker_args(name), self.dir / name)
        self.wait_for_file(self.processes[name], self.dir / name / "port")

    def start_coordinator(self, db=None):
        (self.dir / "coordinator" / "port").unlink(missing_ok=True)
        self.processes["coordinator"] = Process("coordinator", self.coordinator_args(db),
                                                self.dir / "coordinator")
        self.wait_for_file(self.processes["coordinator"], self.dir / "coordinator" / "port")

    def prometheus_config(self):
        text = (REPO / "deploy/prometheus/prometheus.yml").read_text()
        for name, ports in DEFAULT_PORTS.items():
            if "metrics" in ports:
                text = text.replace(f"127.0.0.1:{ports['metrics']}",
                                    f"127.0.0.1:@{self.ports[name]['metrics']}")
        text = text.replace("127.0.0.1:@", "127.0.0.1:")
        text = re.sub(r"(scrape_interval|evaluation_interval): \S+",
                      rf"\1: {self.scrape_interval}", text)
        rules = REPO / "deploy/prometheus"
        text = re.sub(r"- (rules/\S+\.yml)", lambda m: f"- {rules / m.group(1)}", text)
        path = self.dir / "prometheus.yml"
        path.write_text(text)
        return path

    def start_prometheus(self):
        web = f"127.0.0.1:{self.ports['prometheus']['web']}"
        self.processes["prometheus"] = Process(
            "prometheus",
            ["prometheus", f"--config.file={self.prometheus_config()}",
             f"--web.listen-address={web}", f"--storage.tsdb.path={self.dir / 'prometheus/data'}",
             "--log.level=warn"],
            self.dir / "prometheus")
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if "Ready" in http_get(f"http://{web}/-/ready", timeout=1):
                    return
            except OSError:
                pass
            if not self.processes["prometheus"].alive():
                break
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not start:\n{self.processes['prometheus'].log_text()}")

    def wait_for_file(self, process, path, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.exists():
                return
            if not process.alive():
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n"
                                   f"{process.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"{process.name} did not start serving:\n{process.log_text()}")

    def start(self):
        self.make_secrets()
        for name in ("worker-0", "worker-1"):
            self.start_worker(name)
        self.start_coordinator()
        if self.with_prometheus:
            self.start_prometheus()
        log(f"cluster up in {self.dir}: coordinator 127.0.0.1:{self.ports['coordinator']['grpc']}"
            + (f", Prometheus http://127.0.0.1:{self.ports['prometheus']['web']}"
               if self.with_prometheus else ""))
        return self

    def stop(self, keep=False):
        for process in reversed(list(self.processes.values())):
            process.stop()
        if self.own_directory and not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop(keep=True)
            raise

    def __exit__(self, *exc):
        keep = self.keep or exc[0] is not None
        self.stop(keep=keep)
        if keep and self.own_directory:
            log(f"logs kept in {self.dir}")

    # -- observing ------------------------------------------------------------------------------
    def scrape(self, name):
        return scrape(self.ports[name]["metrics"])

    def query(self, expr, time_s=None):
        """Prometheus /api/v1/query: the result list (raises on an API error)."""
        params = {"query": expr}
        if time_s is not None:
            params["time"] = str(time_s)
        url = (f"http://127.0.0.1:{self.ports['prometheus']['web']}/api/v1/query?"
               + urllib.parse.urlencode(params))
        try:
            body = json.loads(http_get(url, timeout=30))
        except urllib.error.HTTPError as e:
            body = json.loads(e.read().decode())
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def health(self, name, service=""):
        """grpc.health.v1.Health/Check on the plaintext health port: SERVING, NOT_SERVING, ..."""
        import grpc  # the virtualenv's grpcio (scripts/requirements-dev.txt)

        request = (b"\x0a" + bytes([len(service)]) + service.encode()) if service else b""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports[name]['health']}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            response = check(request, timeout=5)
        status = response[1] if len(response) == 2 and response[0] == 0x08 else 0
        return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING"}.get(status, str(status))


def documents(directory, count, chars=2500):
    """`count` distinct text documents of `chars` characters (2,500: ~700 tokens, 6 segments of
    the tiny settings), cut from the repository's docs."""
    text = (REPO / "docs/SERVICE.md").read_text()
    while len(text) < 2 * chars:
        text += "\n\n" + text
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        start = (i * 1777) % max(1, len(text) - chars)
        body = f"Document {i} of the local batch.\n\n" + text[start:start + chars]
        path = directory / f"doc-{i}.txt"
        path.write_text(body)
        paths.append(path)
    return paths
