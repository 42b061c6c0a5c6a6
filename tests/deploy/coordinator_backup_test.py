#!/usr/bin/env python3
"""Backup and restore of the coordinator's RocksDB, as deploy/README.md describes them: an online
backup (SIGUSR1 -> --backup-dir) taken while a job runs, the coordinator lost (SIGKILL), a fresh
coordinator started on a copy of the backup (new --db), and the job finishes there. The offline
command (`longread-coordinator backup`) refuses a database in use and copies a stopped one.
Exit 77 (skipped) without the model.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy/local"))
import cluster as local  # noqa: E402

BUILD = os.environ.get("LONGREAD_BUILD_DIR", str(REPO / "build"))
MODEL = os.environ.get("LONGREAD_MODEL", str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))


def wait_until(what, predicate, timeout=120, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class CoordinatorBackupTest(unittest.TestCase):
    def setUp(self):
        if not Path(MODEL).is_file():
            raise unittest.SkipTest("needs the model")
        self.cluster = local.Cluster(BUILD, MODEL, prometheus=False, checkpoint_seconds=1)
        self.cluster.__enter__()

    def tearDown(self):
        self.cluster.__exit__(None, None, None)

    def get_job(self, job_id):
        return json.loads(self.cluster.client("get", "--json", job_id, role="read").stdout)

    def test_backup_during_a_job_restores_into_a_fresh_coordinator_that_finishes_it(self):
        try:
            self.back_up_and_restore()
        except BaseException:
            self.cluster.keep = True  # logs and databases, for the failure
            raise

    def back_up_and_restore(self):
        c = self.cluster
        db = c.dir / "coordinator" / "db"
        backups = Path(f"{db}.backups")
        docs = local.documents(c.dir / "documents", 2)
        job_id = c.client("submit", "--question", "What is described here?", *local.TINY_JOB,
                          *map(str, docs)).stdout.strip()

        # Back up once the coordinator holds a checkpoint of a document (its resume point).
        wait_until("a checkpoint at the coordinator",
                   lambda: local.metric(c.scrape("coordinator"),
                                        "longread_checkpoint_bytes_total") > 0)
        c.processes["coordinator"].signal(signal.SIGUSR1)
        # The path it logs (RocksDB writes into a ".tmp" directory and renames it when done).
        done = wait_until("backup_done in the log", lambda: next(
            (json.loads(line) for line in c.processes["coordinator"].log_text().splitlines()
             if '"event":"backup_done"' in line), None))
        backup = Path(done["path"])
        self.assertEqual(backup.parent, backups)
        self.assertTrue((backup / "CURRENT").exists())
        at_backup = self.get_job(job_id)
        self.assertEqual(at_backup["state"], "JOB_STATE_RUNNING",
                         "the job ended before the backup was known to be complete")

        # The offline command refuses a database a coordinator holds.
        busy = subprocess.run([c.binary("longread-coordinator"), "backup", "--db", str(db),
                               "--to", str(c.dir / "offline")], capture_output=True, text=True)
        self.assertEqual(busy.returncode, 1, busy.stderr)
        self.assertIn("SIGUSR1", busy.stderr)

        # The coordinator and its volume are lost; a fresh one starts from a copy of the backup.
        c.processes["coordinator"].signal(signal.SIGKILL)
        c.processes["coordinator"].wait(10)
        restored = c.dir / "restored-db"
        shutil.copytree(backup, restored)
        shutil.rmtree(db)
        c.start_coordinator(db=restored)

        watched = c.client("watch", "--quiet", job_id, role="read", check=False)
        self.assertEqual(watched.returncode, 0, watched.stderr)
        job = self.get_job(job_id)
        self.assertEqual(job["state"], "JOB_STATE_SUCCEEDED")
        self.assertEqual(len(job["documents"]), 2)
        for d in job["documents"]:
            self.assertEqual(d["state"], "DOCUMENT_STATE_SUCCEEDED", d["name"])
            self.assertTrue(d["answer"], d["name"])
        print(f"backup {backup.name}: job {at_backup['state']}, tokens read "
              f"{[int(d['tokens_read']) for d in at_backup['documents']]} of "
              f"{[int(d['total_tokens']) for d in at_backup['documents']]}; restored: "
              f"{job['state']}, attempts {[d['stats']['attempts'] for d in job['documents']]}",
              file=sys.stderr)

        # Offline, the stopped coordinator's database copies too.
        c.processes["coordinator"].signal(signal.SIGTERM)
        self.assertEqual(c.processes["coordinator"].wait(30), 0)
        offline = subprocess.run([c.binary("longread-coordinator"), "backup", "--db",
                                  str(restored), "--to", str(c.dir / "offline")],
                                 capture_output=True, text=True)
        self.assertEqual(offline.returncode, 0, offline.stderr)
        self.assertTrue((c.dir / "offline" / "CURRENT").exists())


if __name__ == "__main__":
    unittest.main(verbosity=2)
