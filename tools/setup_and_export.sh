#!/usr/bin/env bash
# The README's first command: set up, then compress the shipped default teacher.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/edgecompress export "$@"
