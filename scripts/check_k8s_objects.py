#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (kubectl kustomize output) against the API schemas.

Built-in kinds: kubernetes-validate's offline OpenAPI schemas, strict (an unknown field fails),
for every Kubernetes version given. Custom resources: the models generated from the Prometheus
Operator's and KEDA's CRDs (PyPI cloudcoil-models-*): the object must parse, and every field it
sets must be one the CRD knows (the models ignore unknown fields, so the check compares the
object with what the model read back). Any other kind is an error, not a skip.

Then what ties objects of one rendering together: the workers' grace period outlasts their drain
(LONGREAD_WORKER_DRAIN_SECONDS), and KEDA's threshold is the documents one worker reads at once
(LONGREAD_WORKER_CAPACITY).

    check_k8s_objects.py [--kubernetes-version V]... FILE...
"""
import argparse
import sys

import kubernetes_validate
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring

CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): monitoring.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
}


def unknown_fields(given, parsed, path=""):
    """Paths in `given` that are absent from `parsed` (the model's by-alias dump)."""
    if isinstance(given, dict):
        if not isinstance(parsed, dict):
            return [path or "."]
        found = []
        for key, value in given.items():
            if key not in parsed:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(value, parsed[key], f"{path}.{key}")
        return found
    if isinstance(given, list):
        if not isinstance(parsed, list) or len(parsed) != len(given):
            return [path]
        found = []
        for i, (g, p) in enumerate(zip(given, parsed)):
            found += unknown_fields(g, p, f"{path}[{i}]")
        return found
    return []


def check_custom(obj, model):
    parsed = model.model_validate(obj).model_dump(mode="json", by_alias=True, exclude_unset=True)
    return [f"unknown field {p}" for p in unknown_fields(obj, parsed)]


def find(objects, kind, name_prefix):
    found = [o for o in objects
             if o.get("kind") == kind and o["metadata"]["name"].startswith(name_prefix)]
    if len(found) != 1:
        raise ValueError(f"expected one {kind} {name_prefix}*, found {len(found)}")
    return found[0]


def check_invariants(objects):
    settings = find(objects, "ConfigMap", "longread-settings")["data"]
    worker = find(objects, "StatefulSet", "longread-worker")["spec"]["template"]["spec"]
    scaler = find(objects, "ScaledObject", "longread-worker")["spec"]["triggers"][0]["metadata"]
    errors = []
    drain = int(settings["LONGREAD_WORKER_DRAIN_SECONDS"])
    grace = worker["terminationGracePeriodSeconds"]
    if grace < drain + 10:
        errors.append(f"worker terminationGracePeriodSeconds {grace} leaves less than 10 s after "
                      f"LONGREAD_WORKER_DRAIN_SECONDS {drain}")
    capacity = settings["LONGREAD_WORKER_CAPACITY"]
    if scaler["threshold"] != capacity:
        errors.append(f"KEDA threshold {scaler['threshold']} is not LONGREAD_WORKER_CAPACITY "
                      f"{capacity}")
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", action="append", dest="versions")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    versions = args.versions or [kubernetes_validate.latest_version()]
    failures = checked = 0
    for filename in args.files:
        with open(filename) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        for obj in objects:
            name = f"{filename}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            errors = []
            model = CUSTOM_KINDS.get((obj.get("apiVersion"), obj.get("kind")))
            try:
                if model:
                    errors = check_custom(obj, model)
                else:
                    for version in versions:
                        kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors = [f"Kubernetes {e.version}: {'.'.join(map(str, e.path))}: {e.message}"]
            except kubernetes_validate.SchemaNotFoundError as e:
                errors = [e.message]
            except Exception as e:  # pydantic's ValidationError and anything unexpected
                errors = [str(e)]
            checked += 1
            for error in errors:
                failures += 1
                print(f"{name}: {error}", file=sys.stderr)
        try:
            errors = check_invariants(objects)
        except (KeyError, ValueError) as e:
            errors = [f"cannot check invariants: {e}"]
        for error in errors:
            failures += 1
            print(f"{filename}: {error}", file=sys.stderr)
    print(f"{checked} objects checked ({', '.join(versions)} + CRDs), {failures} errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
