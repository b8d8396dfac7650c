#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh OUT.json [--dry-run] [--budget-s S]
# Thin wrapper: all logic lives in gpu_check.py. It runs with $PYTHON, else the checkout's
# .venv, else python3. A lent GPU machine has no venv and no network: there the wheels in .whl/
# (made here by benchmarks/gpu_wheels.sh, carried along) and mocobench itself (editable, from
# this tree) are installed into that python first.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { echo "usage: bash benchmarks/gpu_check.sh OUT.json [gpu_check.py options]" >&2; exit 2; }
out=$1; shift
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
if ! "$py" -c "import mocobench.pretrain" 2>/dev/null; then
    if [[ -d .whl ]]; then "$py" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl; fi
    "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
exec "$py" -m benchmarks.gpu_check --out "$out" "$@"
