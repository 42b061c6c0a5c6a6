"""A coordinator and workers as real processes on loopback ports, for the client tests and
bench/service. Each process gets its own temp dir; stop() kills whatever still runs."""

import os
import signal
import subprocess
import tempfile
import time


def find_binaries(build_dir):
    return {
        "coordinator": os.path.join(build_dir, "services/coordinator/longread-coordinator"),
        "worker": os.path.join(build_dir, "services/worker/longread-worker"),
        "cli": os.path.join(build_dir, "services/cli/longread"),
    }


def _wait_port(path, proc, what, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before serving")
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not serve within {timeout} s")


class Cluster:
    def __init__(self, build_dir, model, workers=1, threads=1, capacity=4,
                 coordinator_args=(), worker_args=(), log_dir=None, worker_list=None):
        self.bin = find_binaries(build_dir)
        self.model = model
        self.tmp = tempfile.TemporaryDirectory(prefix="longread-cluster-")
        self.log_dir = log_dir or self.tmp.name
        self.procs = []
        self.worker_procs = []
        worker_ports = []
        for i in range(workers):
            port_file = os.path.join(self.tmp.name, f"worker{i}.port")
            proc = self._spawn(f"worker{i}", [
                self.bin["worker"], "--listen", "127.0.0.1:0", "--listen-port-file", port_file,
                "--metrics-listen", "", "--model", model, "--threads", str(threads),
                "--capacity", str(capacity), "--cache-dir", os.path.join(self.tmp.name, f"w{i}"),
                *worker_args])
            self.worker_procs.append(proc)
            worker_ports.append(_wait_port(port_file, proc, f"worker {i}"))
        self.worker_list = worker_list or ",".join(f"127.0.0.1:{p}" for p in worker_ports)
        self.coordinator_args = list(coordinator_args)
        self.port = 0
        self._start_coordinator()
        self.address = f"127.0.0.1:{self.port}"

    def _start_coordinator(self):
        port_file = os.path.join(self.tmp.name, "coordinator.port")
        if os.path.exists(port_file):
            os.remove(port_file)
        self.coordinator = self._spawn("coordinator", [
            self.bin["coordinator"], "--listen", f"127.0.0.1:{self.port}", "--port-file",
            port_file, "--metrics-listen", "", "--model", self.model,
            "--db", os.path.join(self.tmp.name, "db"), "--workers", self.worker_list,
            *self.coordinator_args])
        self.port = _wait_port(port_file, self.coordinator, "coordinator")

    def kill_coordinator(self):
        """SIGKILL: nothing flushed, no stream closed cleanly."""
        self.coordinator.kill()
        self.coordinator.wait()

    def restart_coordinator(self):
        """On the same port and database: clients re-attach to the same address."""
        self._start_coordinator()

    def _spawn(self, name, argv):
        with open(os.path.join(self.log_dir, f"{name}.log"), "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def log(self, name):
        path = os.path.join(self.log_dir, f"{name}.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
