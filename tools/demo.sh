#!/usr/bin/env bash
# Set up and run the live server on the synthetic demo stream (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh cpu
exec .venv/bin/streamcap run "$@"
