#!/usr/bin/env bash
# Run the integration suite against each supported Salt release, each in its
# own venv (.venv-salt-<version>): the newest 3007 this registry serves (3007.16+
# need a certifi release it lacks) and the pinned 3008.
#   scripts/matrix.sh                  both
#   SALT_VERSIONS="3007.15" scripts/matrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
VERSIONS=${SALT_VERSIONS:-"3007.15 3008.3"}
status=0
for version in $VERSIONS; do
  venv=".venv-salt-$version"
  if ! "$venv/bin/python" -c "import salt.version, fakeredis, pytest" 2>/dev/null; then
    echo "==> creating $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "salt==$version" $(grep -v -e '^#' -e '^salt==' requirements-test.txt)
  fi
  echo "==> Salt $version: integration suite"
  if ! "$venv/bin/python" -m pytest -q -ra tests/integration -p no:cacheprovider; then
    status=1
  fi
done
exit $status
