#!/usr/bin/env bash
# The first command on a fresh clone: set up .venv (CPU build of torch) and train the default
# character-level LSTM language model on the corpus embedded in CPython (no download), which
# shows progress, evaluates on held-out text, saves a checkpoint under runs/ and prints a sample.
# Extra arguments go to `rnnkit train lm`, e.g. ./run.sh --epochs 2 --out runs/demo
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/setup
exec .venv/bin/rnnkit train lm "$@"
