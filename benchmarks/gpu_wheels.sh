#!/usr/bin/env bash
# Run HERE (with network) before a GPU session: writes into .whl/ the wheels of mocobench's
# dependencies that the lent GPU machine's python (3.12, torch and torchvision installed,
# no network) lacks, so benchmarks/gpu_check.sh can install them there (run with carry .whl).
# Pure-python ones are built here; pycocotools is downloaded as its manylinux cp312 wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
rm -rf .whl && mkdir .whl
"$py" -m pip wheel -q --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pycocotools==2.0.11
ls -l .whl
