#!/usr/bin/env bash
# Run the whole test suite: set up .venv, then pytest (extra arguments go to pytest). The suite
# executes every notebook with its smoke parameters and, where Chromium is installed, builds the
# book and checks it in a headless browser.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -m pytest "$@"
