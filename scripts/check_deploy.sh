#!/usr/bin/env bash
# Static checks of deploy/ with the real tools (CI: scripts/test.sh, step "deploy checks"):
#   yamllint                every YAML file (.yamllint)
#   kubectl kustomize       every overlay renders (with throw-away secrets from make-secrets.sh)
#   check_k8s_objects.py    every rendered object against the Kubernetes schemas (strict) and the
#                           Prometheus Operator / KEDA CRD models; grace period vs drain, KEDA
#                           threshold vs capacity
#   Dockerfile sources      what the image builds read exists and is not dockerignored
#   checkov                 the rendered manifests, the Dockerfiles, and no secret in deploy/
#   check_deploy_metrics.py dashboard, rules and KEDA use docs/SERVICE.md's metrics; PromQL parses;
#                           k8s/base/prometheusrule.yaml is the rule files' current translation
#   promtool                check config, check rules, test rules
# Needs kubectl, promtool (Debian's prometheus) and the virtualenv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
# The oldest Kubernetes these manifests support (native gRPC probes are GA since 1.27), and the
# newest whose schemas kubernetes-validate ships.
kube_versions=(1.30 1.37)

fail() { echo "check_deploy.sh: $*" >&2; exit 1; }
for tool in kubectl promtool openssl; do
  command -v "$tool" >/dev/null || fail "$tool not found (kubectl: preinstalled; promtool: apt-get install prometheus)"
done
for tool in yamllint checkov python; do
  [ -x "$venv/$tool" ] || fail "$venv/$tool not found: run scripts/setup.sh"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
section() { echo "--- $*"; }

section "yamllint"
"$venv/yamllint" --strict deploy .yamllint

section "kubectl kustomize"
# Render from a copy, with secrets made for the occasion: nothing is written into the tree.
cp -r deploy/k8s "$tmp/k8s"
find "$tmp/k8s/base/secrets" -mindepth 1 -delete
deploy/k8s/make-secrets.sh --out "$tmp/k8s/base/secrets" 2>/dev/null
mkdir "$tmp/rendered"
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$tmp/k8s/overlays/$name" >"$tmp/rendered/$name.yaml"
  echo "$name: $(grep -c '^kind:' "$tmp/rendered/$name.yaml") objects"
done

section "Kubernetes schemas"
"$venv/python" scripts/check_k8s_objects.py "${kube_versions[@]/#/--kubernetes-version=}" \
  "$tmp"/rendered/*.yaml

# The check itself must still see a misspelt field, built-in or custom (the CRD models ignore
# unknown fields unless check_k8s_objects.py compares).
sed -e 's/podManagementPolicy:/podManagmentPolicy:/' -e 's/ interval: 15s/ intervall: 15s/' \
  "$tmp/rendered/cpu.yaml" >"$tmp/misspelt.yaml"
if "$venv/python" scripts/check_k8s_objects.py "$tmp/misspelt.yaml" >"$tmp/misspelt.log" 2>&1; then
  fail "check_k8s_objects.py accepted misspelt fields"
fi
for field in podManagmentPolicy intervall; do
  grep -q "$field" "$tmp/misspelt.log" || fail "check_k8s_objects.py missed the misspelt $field"
done
echo "misspelt fields in a StatefulSet and a ServiceMonitor are rejected"

section "checkov"
# Offline: no guideline download (BC_SKIP_MAPPING, --skip-download). Findings are fixed or
# skipped with a reason beside the code: checkov.io/skipN annotations in the manifests,
# "# checkov:skip=" comments in the Dockerfiles.
checkov_run() {
  BC_SKIP_MAPPING=TRUE "$venv/checkov" --quiet --compact --skip-download "$@"
}
checkov_run -d "$tmp/rendered" -d deploy/docker --framework kubernetes dockerfile
checkov_run -d deploy --framework secrets

section "Dockerfile sources"
# What the image builds read from the context must exist and not be cut by .dockerignore.
mapfile -t ignored < <(grep -v -e '^#' -e '^$' .dockerignore)
for dockerfile in deploy/docker/*.Dockerfile; do
  mapfile -t sources < <({
    grep -E '^COPY ' "$dockerfile" | grep -v -e '--from=' | awk '{ for (i = 2; i < NF; i++) print $i }'
    grep -oE 'deploy/docker/[a-z_]+\.sh' "$dockerfile"
  } | sort -u)
  for src in "${sources[@]}"; do
    [ -e "$src" ] || fail "$dockerfile reads $src, which does not exist"
    for pattern in "${ignored[@]}"; do
      case "$src" in "$pattern" | "$pattern"/*) fail "$dockerfile reads $src, which .dockerignore drops" ;; esac
    done
    case "$src" in *.sh) [ -x "$src" ] || fail "$dockerfile runs $src, which is not executable" ;; esac
  done
  echo "$dockerfile: ${#sources[@]} sources present"
done

section "metric names and PromQL"
"$venv/python" scripts/check_deploy_metrics.py
"$venv/python" deploy/prometheus/to_prometheusrule.py --check

section "promtool"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules/*.yml
promtool test rules deploy/prometheus/tests/*.yml
echo "deploy checks passed"
