"""`longread submit | watch | get | cancel | list` against a live coordinator and worker
(real processes on loopback): answers, the JSON-lines stream, offsets, re-attach after the
coordinator is killed and restarted, cancel, paging, repositories, exit codes, tokens."""

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from cluster import Cluster, find_binaries  # noqa: E402

BUILD = os.environ.get("LONGREAD_BUILD_DIR", "build")
MODEL = os.environ.get("LONGREAD_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
CLI = find_binaries(BUILD)["cli"]
# service-shared: tiny memory settings keep a document to seconds.
TINY = ["--memory-k", "64", "--window", "64", "--sinks", "4", "--segment-tokens", "128",
        "--block-tokens", "16", "--recall-blocks", "2", "--max-tokens", "24"]


def prose(sentences):
    subjects = ["The keeper", "A ship", "The harbour", "Every lamp", "The old map", "Her log"]
    verbs = ["records", "watches", "remembers", "follows", "guards", "counts"]
    objects = ["the tide at dawn", "storms from the north", "ships that never came back",
               "the number of gulls", "the price of oil", "lights along the coast"]
    return " ".join(f"{subjects[i % 6]} {verbs[(i * 5) % 6]} {objects[(i * 7) % 6]} in year "
                    f"{1800 + i}." for i in range(sentences)) + "\n"


def run(*args, env=None, input=None, timeout=300):
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, input=input,
                          timeout=timeout)


@unittest.skipUnless(os.path.exists(MODEL), "no model: run scripts/setup.sh")
class CliClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="longread-cli-test-")
        cls.root = os.path.join(cls.tmp.name, "root")
        os.makedirs(os.path.join(cls.root, "repo", "src"))
        with open(os.path.join(cls.root, "repo", "src", "main.py"), "w") as f:
            f.write("def main():\n    print('hello')\n")
        with open(os.path.join(cls.root, "repo", "README"), "w") as f:
            f.write("A tiny repository.\n")
        deep = os.path.join(cls.root, "repo", "a" * 60, "b" * 60)
        os.makedirs(deep)
        with open(os.path.join(deep, "long_name.txt"), "w") as f:
            f.write("A file whose path is over 100 bytes.\n")
        cls.short = os.path.join(cls.tmp.name, "short.txt")
        with open(cls.short, "w") as f:
            f.write(prose(40))
        cls.long = os.path.join(cls.tmp.name, "long.txt")
        with open(cls.long, "w") as f:
            f.write(prose(120))
        cls.cluster = Cluster(BUILD, MODEL, workers=1,
                              coordinator_args=["--path-root", cls.root,
                                                "--max-document-bytes", str(4 << 20)])
        cls.addr = ["--coordinator", cls.cluster.address]

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()
        cls.tmp.cleanup()

    def submit_id(self, *args):
        r = run("submit", *self.addr, *TINY, *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def test_submit_watch_get_list(self):
        r = run("submit", *self.addr, *TINY, "--watch", "--name", "short", self.short)
        self.assertEqual(r.returncode, 0, r.stderr)
        watched = r.stdout.strip()
        self.assertTrue(watched)
        self.assertIn("100%", r.stderr)  # the progress bar (not a terminal: a line per 10%)

        job_id = self.submit_id("--name", "short again", self.short)
        r = run("watch", *self.addr, "--jsonl", job_id)
        self.assertEqual(r.returncode, 0, r.stderr)
        events = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual([int(e["offset"]) for e in events], list(range(len(events))))
        self.assertIn("accepted", events[0])
        self.assertEqual(events[-1]["job_done"]["state"], "JOB_STATE_SUCCEEDED")
        deltas = "".join(e["answer"]["text"] for e in events if "answer" in e)
        done = [e["document_done"] for e in events if "document_done" in e]
        self.assertEqual(len(done), 1)
        self.assertEqual(done[0]["answer"], deltas)
        # Greedy: the same document and options give the same answer.
        self.assertEqual(deltas.strip(), watched)

        r = run("watch", *self.addr, "--jsonl", "--from-offset", "3", job_id)
        self.assertEqual(r.returncode, 0, r.stderr)
        tail = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(tail, events[3:])

        r = run("get", *self.addr, "--json", job_id)
        self.assertEqual(r.returncode, 0, r.stderr)
        job = json.loads(r.stdout)
        self.assertEqual(job["state"], "JOB_STATE_SUCCEEDED")
        self.assertEqual(job["documents"][0]["answer"], deltas)
        r = run("get", *self.addr, job_id)
        self.assertIn("succeeded", r.stdout)
        self.assertIn(deltas.strip(), r.stdout)

        r = run("list", *self.addr, "--json", "--state", "succeeded")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(job_id, [j["job_id"] for j in json.loads(r.stdout)["jobs"]])
        r = run("list", *self.addr, "--json", "--page-size", "1")
        first = json.loads(r.stdout)
        self.assertEqual(len(first["jobs"]), 1)
        self.assertTrue(first["next_page_token"])
        r = run("list", *self.addr, "--json", "--page-size", "1", "--page-token",
                first["next_page_token"])
        second = json.loads(r.stdout)
        self.assertEqual(len(second["jobs"]), 1)
        self.assertNotEqual(second["jobs"][0]["job_id"], first["jobs"][0]["job_id"])
        r = run("list", *self.addr)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(job_id, r.stdout)

    def test_watch_reattaches_after_coordinator_restart(self):
        job_id = self.submit_id(self.long)
        watcher = subprocess.Popen([CLI, "watch", *self.addr, "--jsonl", job_id],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        while True:
            line = watcher.stdout.readline()
            self.assertTrue(line, "the watch ended before any progress")
            lines.append(line)
            if "progress" in json.loads(line):
                break
        self.cluster.kill_coordinator()
        time.sleep(0.5)
        self.cluster.restart_coordinator()
        out, err = watcher.communicate(timeout=600)
        self.assertEqual(watcher.returncode, 0, err)
        events = [json.loads(line) for line in lines + out.splitlines()]
        # No event missed or repeated across the re-attach.
        self.assertEqual([int(e["offset"]) for e in events], list(range(len(events))))
        self.assertEqual(events[-1]["job_done"]["state"], "JOB_STATE_SUCCEEDED")

    def test_cancel(self):
        job_id = self.submit_id(self.long)
        r = run("cancel", *self.addr, job_id)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(job_id, r.stdout)
        r = run("watch", *self.addr, "--quiet", job_id)
        self.assertEqual(r.returncode, 6, r.stderr)
        r = run("get", *self.addr, "--json", job_id)
        self.assertEqual(json.loads(r.stdout)["state"], "JOB_STATE_CANCELLED")
        r = run("cancel", *self.addr, "--json", job_id)  # idempotent
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_deadline(self):
        r = run("submit", *self.addr, *TINY, "--json", "--deadline", "1s", self.long)
        self.assertEqual(r.returncode, 0, r.stderr)
        job_id = json.loads(r.stdout)["job_id"]
        self.assertIn("deadline", json.loads(r.stdout)["job"])
        r = run("watch", *self.addr, "--jsonl", job_id)
        self.assertEqual(r.returncode, 6, r.stderr)
        events = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertIn({"document_index": -1, "code": 4},
                      [{k: e["error"][k] for k in ("document_index", "code")}
                       for e in events if "error" in e])
        job = json.loads(run("get", *self.addr, "--json", job_id).stdout)
        self.assertEqual(job["state"], "JOB_STATE_FAILED")
        self.assertTrue(job["deadline_exceeded"])
        self.assertIn("(deadline exceeded)", run("get", *self.addr, job_id).stdout)
        for bad in ("soon", "0s", "-5m"):
            self.assertEqual(run("submit", *self.addr, "--deadline", bad, self.short).returncode,
                             2, bad)

    def test_idempotency_key(self):
        first = json.loads(run("submit", *self.addr, *TINY, "--json", "--idempotency-key",
                               "k1", self.short).stdout)
        second = json.loads(run("submit", *self.addr, *TINY, "--json", "--idempotency-key",
                                "k1", self.short).stdout)
        self.assertEqual(first["job_id"], second["job_id"])
        self.assertTrue(second["deduplicated"])
        run("cancel", *self.addr, first["job_id"])

    def test_custom_instruction_and_options_reach_the_job(self):
        r = run("submit", *self.addr, *TINY, "--json", "--instruction", "List the years.",
                "--temperature", "0.5", "--top-p", "0.9", "--seed", "7", self.short)
        self.assertEqual(r.returncode, 0, r.stderr)
        job = json.loads(r.stdout)["job"]
        run("cancel", *self.addr, job["job_id"])
        self.assertEqual(job["task"]["kind"], "TASK_KIND_CUSTOM")
        self.assertEqual(job["task"]["instruction"], "List the years.")
        o = job["options"]
        self.assertEqual((o["memory_k"], o["window"], o["segment_tokens"], o["max_new_tokens"]),
                         ("64", "64", "128", "24"))
        self.assertEqual((o["temperature"], o["top_p"], o["seed"]), (0.5, 0.9, "7"))

    def test_big_file_is_streamed_not_loaded(self):
        # 48 MiB against a 4 MiB document limit: OUT_OF_RANGE (exit 3), and the client's peak RSS
        # within a few MiB of its peak on an empty file (refused at once): holding the file, or
        # more than a few chunks of it, would add tens of MiB. Relative to that baseline, since
        # the binary's own size (it embeds the engine for `longread run`) is not the point.
        def submit_peak_rss(path):
            r = subprocess.run(["/usr/bin/env", "python3", "-c", (
                "import resource, subprocess, sys\n"
                "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                "sys.stderr.write(r.stderr)\n"),
                CLI, "submit", *self.addr, path], capture_output=True, text=True, timeout=600)
            rc, max_rss_kb = map(int, r.stdout.split())
            return rc, max_rss_kb, r.stderr

        empty = os.path.join(self.tmp.name, "empty.txt")
        open(empty, "wb").close()
        rc, baseline_kb, err = submit_peak_rss(empty)
        self.assertEqual(rc, 3, err)
        big = os.path.join(self.tmp.name, "big.txt")
        line = prose(1).encode()
        with open(big, "wb") as f:
            for _ in range((48 << 20) // len(line) + 1):
                f.write(line)
        rc, max_rss_kb, err = submit_peak_rss(big)
        os.remove(big)
        self.assertEqual(rc, 3, err)
        self.assertIn("OUT_OF_RANGE", err)
        self.assertLess(max_rss_kb - baseline_kb, 8 << 10, (max_rss_kb, baseline_kb))

    def test_repository_directory_tar_and_server_path_agree(self):
        repo = os.path.join(self.root, "repo")
        tar = os.path.join(self.tmp.name, "repo.tar")
        with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
            for dirpath, _, files in os.walk(repo):
                for name in files:
                    path = os.path.join(dirpath, name)
                    t.add(path, arcname=os.path.relpath(path, repo))
        totals = []
        for args in (["--repository", repo], ["--repository", tar], ["--server-path", repo]):
            r = run("submit", *self.addr, *TINY, "--json", *args)
            self.assertEqual(r.returncode, 0, r.stderr)
            response = json.loads(r.stdout)
            totals.append(int(response["job"]["documents"][0]["total_tokens"]))
            run("cancel", *self.addr, response["job_id"])
        self.assertGreater(totals[0], 0)
        self.assertEqual(totals, [totals[0]] * 3)

    def test_stdin_and_directory_inputs(self):
        r = run("submit", *self.addr, *TINY, "--json", "-", input=prose(5))
        self.assertEqual(r.returncode, 0, r.stderr)
        response = json.loads(r.stdout)
        self.assertEqual(response["job"]["documents"][0]["name"], "stdin")
        run("cancel", *self.addr, response["job_id"])
        r = run("submit", *self.addr, *TINY, "--json", os.path.join(self.root, "repo"))
        self.assertEqual(r.returncode, 0, r.stderr)
        response = json.loads(r.stdout)
        self.assertEqual(len(response["job"]["documents"]), 3)
        run("cancel", *self.addr, response["job_id"])

    def test_exit_codes(self):
        self.assertEqual(run("get", *self.addr, "00000000000000000000").returncode, 3)
        self.assertEqual(run("watch", *self.addr, "00000000000000000000").returncode, 3)
        self.assertEqual(run("cancel", *self.addr, "00000000000000000000").returncode, 3)
        empty = os.path.join(self.tmp.name, "empty.txt")
        open(empty, "w").close()
        r = run("submit", *self.addr, empty)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("INVALID_ARGUMENT", r.stderr)
        r = run("submit", *self.addr, "--server-path", "/etc/passwd")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("PERMISSION_DENIED", r.stderr)
        self.assertEqual(run("submit", *self.addr, os.path.join(self.tmp.name, "missing")).returncode, 3)
        self.assertEqual(run("submit", *self.addr).returncode, 2)
        self.assertEqual(run("list", *self.addr, "--no-such-flag").returncode, 2)
        self.assertEqual(run("submit", *self.addr, "--task", "question", self.short).returncode, 2)
        self.assertEqual(run("list", "--coordinator", "127.0.0.1:1").returncode, 7)
        env = dict(os.environ, LONGREAD_COORDINATOR="127.0.0.1:1")
        self.assertEqual(run("list", env=env).returncode, 7)
        for command in ("submit", "watch", "get", "list", "cancel"):
            r = run(command, "--help")
            self.assertEqual(r.returncode, 0)
            self.assertIn("Exit codes", r.stdout)


@unittest.skipUnless(os.path.exists(MODEL), "no model: run scripts/setup.sh")
class CliAuthTest(unittest.TestCase):
    """Tokens: missing or wrong -> 8, a read token submitting -> 3 (PERMISSION_DENIED); the
    token never appears in the coordinator's log."""

    def test_tokens(self):
        with tempfile.TemporaryDirectory() as tmp:
            tokens = os.path.join(tmp, "tokens")
            with open(tokens, "w") as f:
                f.write("reader-secret-1 read\nwriter-secret-2 write\n")
            doc = os.path.join(tmp, "doc.txt")
            with open(doc, "w") as f:
                f.write(prose(3))
            # No worker is needed to accept, list or refuse.
            with Cluster(BUILD, MODEL, workers=0, worker_list="127.0.0.1:1",
                         coordinator_args=["--auth-tokens", tokens]) as cluster:
                addr = ["--coordinator", cluster.address]
                self.assertEqual(run("list", *addr).returncode, 8)
                self.assertEqual(run("list", *addr, "--token", "wrong").returncode, 8)
                self.assertEqual(run("list", *addr, "--token", "reader-secret-1").returncode, 0)
                r = run("submit", *addr, "--token", "reader-secret-1", doc)
                self.assertEqual(r.returncode, 3, r.stderr)
                self.assertIn("PERMISSION_DENIED", r.stderr)
                env = dict(os.environ, LONGREAD_TOKEN="writer-secret-2")
                r = run("submit", *addr, doc, env=env)
                self.assertEqual(r.returncode, 0, r.stderr)
                token_file = os.path.join(tmp, "token")
                with open(token_file, "w") as f:
                    f.write("writer-secret-2\n")
                r = run("cancel", *addr, "--token-file", token_file, r.stdout.strip())
                self.assertEqual(r.returncode, 0, r.stderr)
                log = cluster.log("coordinator")
            self.assertNotIn("secret", log)


@unittest.skipUnless(os.path.exists(MODEL), "no model: run scripts/setup.sh")
class CliQueueFullTest(unittest.TestCase):
    """A full queue is RESOURCE_EXHAUSTED: exit 7 and the server's retry hint on stderr."""

    def test_queue_full(self):
        with tempfile.TemporaryDirectory() as tmp:
            doc = os.path.join(tmp, "doc.txt")
            with open(doc, "w") as f:
                f.write(prose(3))
            # No worker: the first document stays queued.
            with Cluster(BUILD, MODEL, workers=0, worker_list="127.0.0.1:1",
                         coordinator_args=["--max-queued-documents", "1"]) as cluster:
                addr = ["--coordinator", cluster.address]
                first = run("submit", *addr, doc)
                self.assertEqual(first.returncode, 0, first.stderr)
                r = run("submit", *addr, doc)
                self.assertEqual(r.returncode, 7, r.stderr)
                self.assertIn("RESOURCE_EXHAUSTED", r.stderr)
                self.assertRegex(r.stderr, r"retry after \d+ ms")
                self.assertEqual(run("cancel", *addr, first.stdout.strip()).returncode, 0)


if __name__ == "__main__":
    unittest.main()
