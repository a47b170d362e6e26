#!/usr/bin/env bash
# Set everything up and run the whole test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/system-deps.sh
bash tools/setup.sh cpu,export,test,alerts,cluster
# pytest exits 5 when it collected no test: that is a failure here, as is any other non-zero code
exec .venv/bin/python -m pytest -q "$@"
