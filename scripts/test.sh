#!/usr/bin/env bash
# Set up (if needed) and run every test: lint, unit (fakeredis) and integration
# (real redis-server, salt-master and salt-minions on 127.0.0.1).
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> pytest"
exec .venv/bin/python -m pytest -ra "${@:-tests}"
