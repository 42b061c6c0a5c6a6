#!/usr/bin/env python3
"""Checks that deploy/ speaks docs/SERVICE.md's metrics, and that every query parses.

- Every `longread_*` metric that a dashboard panel, a recording/alerting rule or the KEDA trigger
  reads is one the contract names (histograms: with _bucket/_sum/_count), and every state/reason
  label value it selects is one the contract lists.
- Every metric of the contract is shown by at least one dashboard panel.
- Every dashboard and KEDA query is valid PromQL: they are written into a rule file (Grafana's
  $__rate_interval as 1m, $namespace as .*) that `promtool check rules` parses.

    check_deploy_metrics.py [REPO_ROOT]
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

METRIC = re.compile(r"(?<![:\w])longread_[a-z0-9_]+(?![:\w])")
LABEL_VALUE = re.compile(r'\b(state|reason)\s*=\s*"([^"]*)"')


def contract(root):
    text = (root / "docs/SERVICE.md").read_text()
    section = text[text.index("## Metrics"):]
    names, histograms = set(), set()
    for line in section.splitlines():
        for name in re.findall(r"`(longread_[a-z0-9_]+)", line):
            names.add(name)
            if "histogram" in line:
                histograms.add(name)
    allowed = {}
    for label, values in re.findall(r"\b(state|reason) in ([a-z_ |]+)", section):
        allowed.setdefault(label, set()).update(v.strip() for v in values.split("|"))
    return names, histograms, allowed


def known(name, names, histograms):
    if name in names:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base in histograms


def dashboard_queries(root):
    board = json.loads((root / "deploy/grafana/longread.json").read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"dashboard panel '{panel['title']}'", target["expr"]


def rule_queries(root):
    for path in sorted((root / "deploy/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name} {rule.get('record') or rule.get('alert')}", rule["expr"]


def keda_queries(root):
    for path in sorted((root / "deploy/k8s").rglob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj.get("kind") == "ScaledObject":
                for trigger in obj["spec"]["triggers"]:
                    yield f"{path.name} {obj['metadata']['name']}", trigger["metadata"]["query"]


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    names, histograms, allowed = contract(root)
    errors = []
    queries = list(dashboard_queries(root)) + list(rule_queries(root)) + list(keda_queries(root))
    for where, expr in queries:
        for name in METRIC.findall(expr):
            if not known(name, names, histograms):
                errors.append(f"{where}: {name} is not in docs/SERVICE.md")
        for label, value in LABEL_VALUE.findall(expr):
            if value not in allowed.get(label, set()):
                errors.append(f"{where}: {label}=\"{value}\" is not a value docs/SERVICE.md lists")
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n)
             in histograms else n
             for _, expr in dashboard_queries(root) for n in METRIC.findall(expr)}
    for name in sorted(names - shown):
        errors.append(f"deploy/grafana/longread.json: no panel shows {name}")

    # PromQL syntax of every query that no rule file already holds, through promtool.
    to_parse = list(dashboard_queries(root)) + list(keda_queries(root))
    rules = {"groups": [{"name": "parse-only", "rules": [
        {"record": f"parse:query_{i}:check",
         "expr": expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")}
        for i, (_, expr) in enumerate(to_parse)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        result = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True,
                                text=True)
    if result.returncode != 0:
        errors.append("promtool could not parse a dashboard/KEDA query:\n" + result.stdout +
                      result.stderr)

    for error in errors:
        print(error, file=sys.stderr)
    print(f"{len(queries)} queries checked against {len(names)} contract metrics, "
          f"{len(to_parse)} parsed by promtool, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
