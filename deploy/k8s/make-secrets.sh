#!/usr/bin/env bash
# Writes what the kustomize secretGenerator reads (base/secrets/, git-ignored): a private CA, the
# coordinator's and the workers' certificates signed by it, and a bearer-token file. For a test
# cluster, or as the template of what your own PKI must issue (deploy/README.md, Secrets).
#   deploy/k8s/make-secrets.sh [--namespace NS] [--out DIR] [--days N]
# Existing files are kept (delete them to re-issue); the CA key never leaves DIR.
set -euo pipefail
namespace=longread
out="$(dirname "$0")/base/secrets"
days=365
while (($#)); do
  case "$1" in
    --namespace) namespace=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "make-secrets.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
cd "$out"
umask 077

if [ ! -f ca.key ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout ca.key \
    -out ca.crt -days "$days" -subj "/CN=longread-ca-$namespace" 2>/dev/null
fi

# issue NAME SAN...: a P-256 key and a certificate for both TLS roles (each process serves, and
# the coordinator is also the workers' client).
issue() {
  local name=$1; shift
  [ -f "$name.crt" ] && return
  local sans
  sans=$(printf 'DNS:%s,' "$@")
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$name.key" \
    -out "$name.csr" -subj "/CN=$1" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -out "$name.crt" -extfile <(printf '%s\n' "subjectAltName=${sans%,}" \
      "extendedKeyUsage=serverAuth,clientAuth" "keyUsage=critical,digitalSignature") 2>/dev/null
  rm -f "$name.csr"
}
svc="svc.cluster.local"
issue coordinator "longread-coordinator.$namespace.$svc" "longread-coordinator.$namespace.svc" \
  "longread-coordinator.$namespace" longread-coordinator localhost
# The coordinator dials dns:///longread-worker-headless.NS.svc.cluster.local:50061 and checks
# that name on every worker.
issue worker "longread-worker-headless.$namespace.$svc" "*.longread-worker-headless.$namespace.$svc"

# "TOKEN ROLE" per line (docs/SERVICE.md, --auth-tokens): one writer, one reader.
if [ ! -f auth-tokens ]; then
  printf '%s write\n%s read\n' "$(openssl rand -hex 32)" "$(openssl rand -hex 32)" >auth-tokens
fi
chmod 600 ./*.key auth-tokens
echo "secrets in $(pwd): ca.crt, coordinator.{crt,key}, worker.{crt,key}, auth-tokens" >&2
