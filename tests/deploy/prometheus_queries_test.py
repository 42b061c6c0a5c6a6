#!/usr/bin/env python3
"""A real Prometheus (Debian's) scrapes a live coordinator and two workers (deploy/local's
cluster: TLS, tokens, production flags) while jobs run; then every query the deployment relies on
goes through its HTTP API and must return data:
  - every target of every panel in deploy/grafana/longread.json ($__rate_interval and the
    template variables substituted as Grafana would with "All");
  - every recording and alerting rule of deploy/prometheus/rules/*.yml, both the expression and,
    for recording rules, the series Prometheus recorded; alert conditions are evaluated with
    `bool` comparisons (a quiet alert filters every series out; the series must still exist);
  - KEDA's query in deploy/k8s/base/worker-scaledobject.yaml.
Metric names come from those files only. Exit 77 (skipped) without the model or prometheus.
"""
import json
import os
import re
import shutil
import sys
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy/local"))
import cluster as local  # noqa: E402

import yaml  # noqa: E402  (the virtualenv's PyYAML)

BUILD = os.environ.get("LONGREAD_BUILD_DIR", str(REPO / "build"))
MODEL = os.environ.get("LONGREAD_MODEL", str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
SCRAPE_SECONDS = 1
# Grafana's $__rate_interval: max(4 x scrape interval, step + scrape interval).
RATE_INTERVAL = f"{4 * SCRAPE_SECONDS}s"
# The server-side codes the error-ratio rule counts, as the rule file spells them.
SERVER_ERROR_MATCHER = re.compile(r'grpc_code=~"([A-Z_|]+)"')


def with_bool(expr):
    """`expr` with `bool` after every comparison outside label matchers and strings, so that a
    condition returns 0/1 for every series instead of dropping the quiet ones."""
    out, depth, quote, i = [], 0, None, 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            out.append(ch)
            if ch == "\\":
                out.append(expr[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
            out.append(ch)
        elif ch in "{[":
            depth += 1
            out.append(ch)
        elif ch in "}]":
            depth -= 1
            out.append(ch)
        elif depth == 0 and (m := re.match(r"==|!=|>=|<=|>|<", expr[i:])):
            op = m.group(0)
            out.append(op)
            i += len(op)
            if not re.match(r"\s*bool\b", expr[i:]):
                out.append(" bool")
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def dashboard_queries():
    board = json.loads((REPO / "deploy/grafana/longread.json").read_text())
    variables = {}
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            assert var.get("includeAll") and "allValue" in var, var["name"]
            variables[var["name"]] = var["allValue"]
    queries = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for name, value in variables.items():
                expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
            assert "$" not in expr, f"unsubstituted variable in {expr}"
            queries.append((f"panel '{panel['title']}' {target.get('refId', '')}", expr))
    return queries


def rules():
    out = []
    for path in sorted((REPO / "deploy/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def keda_queries():
    queries = []
    for doc in yaml.safe_load_all((REPO / "deploy/k8s/base/worker-scaledobject.yaml").read_text()):
        if doc and doc.get("kind") == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    queries.append((f"KEDA {doc['metadata']['name']}",
                                    trigger["metadata"]["query"]))
    return queries


class PrometheusQueriesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not Path(MODEL).is_file() or shutil.which("prometheus") is None:
            raise unittest.SkipTest("needs the model and Debian's prometheus")
        cls.cluster = local.Cluster(BUILD, MODEL, scrape_interval=f"{SCRAPE_SECONDS}s",
                                    checkpoint_seconds=1)
        cls.cluster.__enter__()
        try:
            cls.run_jobs()
        except BaseException:
            cls.cluster.__exit__(*sys.exc_info())
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.__exit__(None, None, None)

    @classmethod
    def run_jobs(cls):
        c = cls.cluster
        docs = local.documents(c.dir / "documents", 4)
        jobs = []
        for j in range(2):
            result = c.client("submit", "--question", "What is described here?", *local.TINY_JOB,
                              str(docs[2 * j]), str(docs[2 * j + 1]))
            jobs.append(result.stdout.strip())
        # A watcher open while the jobs run (longread_watchers), and an unknown job id: a client
        # mistake, NOT_FOUND, on the errors-by-code panel.
        watcher = local.subprocess.Popen(c.client_args("watch", "--quiet", jobs[-1], role="read"),
                                         stdout=local.subprocess.DEVNULL,
                                         stderr=local.subprocess.DEVNULL)
        missing = c.client("get", "no-such-job", role="read", check=False)
        assert missing.returncode == 3, missing.stderr
        for job_id in jobs:
            watched = c.client("watch", "--quiet", job_id, role="read", check=False)
            assert watched.returncode == 0, watched.stderr
        watcher.wait(60)
        # Enough scrapes after the last answer for every rate window to hold two points, and for
        # the recording rules (evaluated every scrape interval) to have run on them.
        time.sleep(6 * SCRAPE_SECONDS)
        # Both workers read (each got one of the first documents at least).
        per_worker = c.query('sum by (instance) (longread_tokens_read_total{job="longread-worker"})')
        assert len(per_worker) == 2 and all(float(r["value"][1]) > 0 for r in per_worker), per_worker

    def assert_data(self, where, expr):
        result = self.cluster.query(expr)
        if result:
            return
        # The error ratio has no series when no call failed server-side, which is right for a
        # healthy run: then the same query over every code must have data (the joins and sums
        # work on the live series), and no server error may exist.
        m = SERVER_ERROR_MATCHER.search(expr)
        if m:
            errors = self.cluster.query(f'longread_grpc_server_handled_total{{{m.group(0)}}}')
            self.assertEqual(errors, [], f"{where}: server errors exist, yet {expr} is empty")
            widened = expr.replace(m.group(0), 'grpc_code=~".+"')
            self.assertTrue(self.cluster.query(widened),
                            f"{where}: no data even over every code: {widened}")
            print(f"{where}: no server error in this run; data over every grpc_code",
                  file=sys.stderr)
            return
        self.fail(f"{where}: no data for {expr}")

    def test_every_dashboard_panel_has_data(self):
        queries = dashboard_queries()
        self.assertGreater(len(queries), 20)
        for where, expr in queries:
            with self.subTest(where):
                self.assert_data(where, expr)

    def test_every_rule_expression_has_data(self):
        recorded = {r["record"]: r["expr"] for r in rules() if "record" in r}
        all_rules = rules()
        self.assertGreater(len(all_rules), 10)
        for rule in all_rules:
            name = rule.get("record") or rule["alert"]
            with self.subTest(name):
                expr = rule["expr"] if "record" in rule else with_bool(rule["expr"])
                # A recorded series used by another rule: its own expression inline, so that an
                # empty error ratio is judged on its definition (assert_data above).
                inlined = expr
                for record, definition in recorded.items():
                    if record in inlined and not self.cluster.query(record):
                        inlined = inlined.replace(record, f"({definition})")
                self.assert_data(name, inlined)

    def test_every_recording_rule_was_recorded(self):
        state = json.loads(local.http_get(
            f"http://127.0.0.1:{self.cluster.ports['prometheus']['web']}/api/v1/rules"))
        seen = {}
        for group in state["data"]["groups"]:
            for rule in group["rules"]:
                seen[rule["name"]] = rule
        for rule in rules():
            name = rule.get("record") or rule["alert"]
            with self.subTest(name):
                self.assertIn(name, seen, "not loaded by Prometheus")
                self.assertEqual(seen[name]["health"], "ok", seen[name].get("lastError"))
                if "record" in rule and not SERVER_ERROR_MATCHER.search(rule["expr"]):
                    self.assertTrue(self.cluster.query(rule["record"]), "nothing recorded")

    def test_keda_query_has_data(self):
        queries = keda_queries()
        self.assertTrue(queries)
        for where, expr in queries:
            with self.subTest(where):
                self.assert_data(where, expr)

    def test_a_misspelt_metric_has_no_data(self):
        # The check above can fail: the first panel's query with its metric names misspelt.
        where, expr = dashboard_queries()[0]
        misspelt = re.sub(r"\blongread_", "longread_misspelt_", expr)
        self.assertNotEqual(misspelt, expr)
        self.assertEqual(self.cluster.query(misspelt), [], misspelt)

    def test_health_ports_answer_in_plaintext(self):
        # The main ports are TLS; the health ports are what Kubernetes' grpc probes reach.
        self.assertEqual(self.cluster.health("coordinator", "longread.v1.JobService"), "SERVING")
        for worker in ("worker-0", "worker-1"):
            self.assertEqual(self.cluster.health(worker, "longread.v1.WorkerService"), "SERVING")


if __name__ == "__main__":
    unittest.main(verbosity=2)
