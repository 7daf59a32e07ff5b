#!/usr/bin/env bash
# The README's test command: set up, lint, then the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check edgecompress tests tools benchmarks
.venv/bin/python -m pytest -q -rs --durations=15 "$@"
