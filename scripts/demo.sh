#!/usr/bin/env bash
# The main job on a fresh machine: set up, start the embedded aligner server, and align a real
# MT-bench draft through `prompt | llm | DiffPOAlign()` (see examples/quickstart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
python examples/quickstart.py "$@"
