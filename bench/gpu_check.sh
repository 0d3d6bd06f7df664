#!/usr/bin/env bash
# The prepared GPU check of issue 23: build, `pytest -m gpu`, the GPU benchmarks, a report.
#   bash bench/gpu_check.sh OUT_DIR [--dry-run] [--no-build]
# Everything is in bench/gpu_check.py (its docstring says what each stage does); this wrapper
# only picks the interpreter and is a backstop: the stages bound themselves at 460 s in all.
set -u
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash bench/gpu_check.sh OUT_DIR [--dry-run] [--no-build]" >&2
  exit 2
fi
exec timeout --signal=TERM 490 "${PYTHON:-python}" bench/gpu_check.py "$@"
