#!/usr/bin/env bash
# Run the benchmarks: sets up .venv (scripts/setup.sh) and the peer's venv
# (.venv-peer: saltext.redis, which pins redis-py < 4), starts its own
# redis-server on 127.0.0.1 and prints every figure with its ratio.
#   benchmarks/run.sh            full sizes, 5 runs per figure (a few minutes)
#   benchmarks/run.sh --quick    small sizes, 2 runs (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
if [ ! -x .venv-peer/bin/python ] || ! .venv-peer/bin/python -c "import saltext.redis" 2>/dev/null; then
  echo "==> creating .venv-peer with saltext.redis (the peer returner)"
  python3 -m venv .venv-peer
  .venv-peer/bin/pip install -q "salt==3008.3" "saltext.redis==1.0.2"
fi
exec .venv/bin/python benchmarks/bench.py --peer-python .venv-peer/bin/python "$@"
