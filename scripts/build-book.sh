#!/usr/bin/env bash
# Build the whole book into _build/html: set up .venv, execute every notebook headless with
# papermill (profile: default, or the first argument: smoke | default | gpu), render with
# jupyter-book. Fails on any cell error and on any Sphinx warning.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -m locolib.book --profile "${1:-default}"
