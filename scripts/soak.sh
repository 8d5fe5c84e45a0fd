#!/usr/bin/env bash
# The long soak of the delivery simulation (tests/sim): 100,000 seeded histories by default.
#   scripts/soak.sh [--histories N] [--start S] [--jobs J] [-q]     # prints histories/s
#   scripts/soak.sh --seed N -v                                     # replay one history, with its trace
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0  # fakeredis' sets iterate in hash order: one order for every run
exec .venv/bin/python -m tests.sim.soak "$@"
