#!/usr/bin/env bash
# Set up a virtual environment with the pinned development requirements and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r requirements-dev.txt
QT_QPA_PLATFORM=offscreen .venv/bin/pytest -q -p no:cacheprovider --timeout=600 "$@"
