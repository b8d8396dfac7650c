#!/usr/bin/env bash
# Run every job of the paper's tables (see: mocobench run-all --help).
# Thin wrapper: all logic lives in results/run_all.py, run from the installed package.
# It runs with $PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON; elif [[ -x "$root/.venv/bin/python" ]]; then py=$root/.venv/bin/python; else py=python3; fi
# mocobench.results, not mocobench: from the checkout root the source folder mocobench/ imports without the install
if ! "$py" -c "import mocobench.results" 2>/dev/null; then
    version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "not runnable")
    echo "run_all.sh: $(command -v "$py" || echo "$py") (Python $version) cannot import mocobench; install it:" \
         "python3 -m venv .venv && .venv/bin/pip install -e . (or set PYTHON=.venv/bin/python)" >&2
    exit 2
fi
exec "$py" -m mocobench run-all "$@"
