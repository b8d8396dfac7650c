#!/usr/bin/env bash
# Run every job of the paper's tables (see: mocobench run-all --help).
# Thin wrapper: all logic lives in results/run_all.py, run from the installed package.
set -euo pipefail
exec "${PYTHON:-python3}" -m mocobench run-all "$@"
