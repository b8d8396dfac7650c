#!/usr/bin/env bash
# Run every job of the paper's tables (see: mocobench run-all --help).
# Thin wrapper: all logic lives in results/run_all.py; this only runs it from this checkout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m mocobench run-all "$@"
