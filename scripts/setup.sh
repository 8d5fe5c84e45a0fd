#!/usr/bin/env bash
# Idempotent setup for the demo and the tests: Debian's redis-server and a venv
# at .venv with Salt and the test packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server for everything; faketime (libfaketime) for the test of a master whose clock is off
if ! command -v redis-server >/dev/null 2>&1 || [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
  echo "==> installing redis-server and faketime (apt)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server faketime >/dev/null
fi
# Debian's package starts a system redis on 6379; we never use it (tests pick free ports).

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import salt, redis, msgpack, fakeredis, lupa, pytest" 2>/dev/null; then
  echo "==> installing Python packages into .venv (salt takes a minute)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements-test.txt
fi
echo "==> ready: $(.venv/bin/python -c 'import salt.version; print("salt", salt.version.__version__)'), $(redis-server --version | cut -d' ' -f1-3)"
