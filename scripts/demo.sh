#!/usr/bin/env bash
# Set up (if needed) and run the demo: a local redis-server, a salt-master and two
# minions on 127.0.0.1; one minion is down when a job is published, comes back
# and gets it. Everything lives in a temp dir and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python demo/demo.py "$@"
