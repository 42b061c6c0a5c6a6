"""services/python_client (generated stubs + thin wrapper) against a live coordinator and worker
started as real processes: a short document submitted and watched to the end answers as
`longread submit --watch` does; cancel; an unknown job id is NOT_FOUND."""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "services", "python_client"))
import grpc  # noqa: E402

from cluster import Cluster, find_binaries  # noqa: E402
from cli_client_test import prose  # noqa: E402

BUILD = os.environ.get("LONGREAD_BUILD_DIR", "build")
MODEL = os.environ.get("LONGREAD_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
TINY = dict(memory_k=64, window=64, sinks=4, segment_tokens=128, block_tokens=16,
            recall_blocks=2, max_new_tokens=24)
TINY_FLAGS = ["--memory-k", "64", "--window", "64", "--sinks", "4", "--segment-tokens", "128",
              "--block-tokens", "16", "--recall-blocks", "2", "--max-tokens", "24"]


@unittest.skipUnless(os.path.exists(MODEL), "no model: run scripts/setup.sh")
class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from longread_client import Client
        cls.tmp = tempfile.TemporaryDirectory(prefix="longread-py-test-")
        cls.cluster = Cluster(BUILD, MODEL, workers=1)
        cls.client = Client(cls.cluster.address)
        cls.text = prose(40)
        cls.path = os.path.join(cls.tmp.name, "short.txt")
        with open(cls.path, "w") as f:
            f.write(cls.text)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.cluster.stop()
        cls.tmp.cleanup()

    def test_answer_equals_the_cli(self):
        response = self.client.submit([("short.txt", self.text.encode())], options=TINY,
                                      name="python")
        self.assertTrue(response.job_id)
        events = list(self.client.watch(response.job_id))
        self.assertEqual([e.offset for e in events], list(range(len(events))))
        self.assertTrue(events[-1].HasField("job_done"))
        answer = "".join(e.answer.text for e in events if e.HasField("answer"))
        self.assertTrue(answer)
        job = self.client.get(response.job_id)
        self.assertEqual(job.documents[0].answer, answer)
        self.assertEqual(job.documents[0].name, "short.txt")
        # From an offset: the same events from there on.
        self.assertEqual(list(self.client.watch(response.job_id, from_offset=2)), events[2:])
        answers, state = self.client.answers(response.job_id)
        self.assertEqual((answers, state), ({0: answer}, "JOB_STATE_SUCCEEDED"))

        cli = find_binaries(BUILD)["cli"]
        r = subprocess.run([cli, "submit", "--coordinator", self.cluster.address, *TINY_FLAGS,
                            "--watch", "--quiet", self.path], capture_output=True, text=True,
                           timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), answer.strip())

        listed = self.client.list(page_size=1000, state="succeeded")
        self.assertIn(response.job_id, [j.job_id for j in listed.jobs])

    def test_watch_reattaches_after_coordinator_restart(self):
        response = self.client.submit([("long.txt", prose(80).encode())], options=TINY)
        offsets, restarted, last = [], False, None
        for event in self.client.watch(response.job_id):
            offsets.append(event.offset)
            last = event
            if not restarted and event.HasField("progress"):
                self.cluster.kill_coordinator()
                self.cluster.restart_coordinator()
                restarted = True
        self.assertTrue(restarted)
        self.assertEqual(offsets, list(range(len(offsets))))  # none missed or repeated
        self.assertEqual(last.job_done.state, 3)  # JOB_STATE_SUCCEEDED

    def test_path_input_and_cancel(self):
        response = self.client.submit([self.path], options=TINY)
        self.assertEqual(response.job.documents[0].name, self.path)
        job = self.client.cancel(response.job_id)
        self.assertEqual(job.job_id, response.job_id)
        answers, state = self.client.answers(response.job_id)
        self.assertEqual(state, "JOB_STATE_CANCELLED")
        self.assertEqual(self.client.get(response.job_id).state, 5)  # JOB_STATE_CANCELLED

    def test_job_deadline(self):
        # ~1,900 tokens: seconds of reading on one thread, far past half a second.
        response = self.client.submit([("long.txt", prose(160).encode())], options=TINY,
                                      job_deadline_seconds=0.5)
        self.assertTrue(response.job.HasField("deadline"))
        answers, state = self.client.answers(response.job_id)
        job = self.client.get(response.job_id)
        self.assertEqual(state, "JOB_STATE_FAILED")
        self.assertTrue(job.deadline_exceeded)
        codes = [e.error.code for e in self.client.watch(response.job_id)
                 if e.HasField("error") and e.error.document_index == -1]
        self.assertEqual(codes, [4])  # DEADLINE_EXCEEDED

    def test_repository_directory_as_the_cli_sends_it(self):
        from longread_client import Repository
        repo = os.path.join(self.tmp.name, "repo")
        os.makedirs(os.path.join(repo, "src", "x" * 80))
        with open(os.path.join(repo, "src", "main.py"), "w") as f:
            f.write("def main():\n    return 42\n")
        with open(os.path.join(repo, "src", "x" * 80, "deep_file_name.txt"), "w") as f:
            f.write("a path over 100 bytes\n")
        response = self.client.submit([Repository(repo)], task="analyze_code", options=TINY)
        self.client.cancel(response.job_id)
        cli = find_binaries(BUILD)["cli"]
        r = subprocess.run([cli, "submit", "--coordinator", self.cluster.address, "--json",
                            "--task", "analyze_code", *TINY_FLAGS, "--repository", repo],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        import json
        by_cli = json.loads(r.stdout)
        subprocess.run([cli, "cancel", "--coordinator", self.cluster.address, by_cli["job_id"]],
                       capture_output=True)
        self.assertGreater(response.job.documents[0].total_tokens, 0)
        self.assertEqual(response.job.documents[0].total_tokens,
                         int(by_cli["job"]["documents"][0]["total_tokens"]))

    def test_unknown_job_is_not_found(self):
        for call in (self.client.get, self.client.cancel,
                     lambda job_id: list(self.client.watch(job_id))):
            with self.assertRaises(grpc.RpcError) as raised:
                call("00000000000000000000")
            self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_bad_input_is_invalid_argument(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.client.submit([("empty.txt", b"")], options=TINY)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)


if __name__ == "__main__":
    unittest.main()
