#!/usr/bin/env bash
# A Longread cluster on this machine: coordinator, two workers and Prometheus as separate
# processes on loopback with the production flags (TLS, mutual TLS to workers, tokens), a batch
# of jobs through `longread submit/watch/get`, one worker SIGKILLed mid-batch, the batch
# completing. Options: deploy/local/batch_failover.py --help. Needs the binaries built
# (longread-coordinator, longread-worker, longread), Debian's prometheus, the model and the
# virtualenv (scripts/setup.sh). Exit 77: no model.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
exec "$python" deploy/local/batch_failover.py "$@"
